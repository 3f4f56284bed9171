"""SPLIT as an EasyEdit editing method, on the embedded SmolLM2-135M-Instruct.

    pip install -e . && pip install --no-deps easyeditor==0.0.1.dev0 && pip install -r requirements-easyedit.txt
    python examples/easyedit_quickstart.py            # ~1 minute on 2 CPU cores

Importing `split_plugin.easyedit` registers "SPLIT" with EasyEdit's BaseEditor; the rest is the
host's usual API. Works with the PyPI wheel and with the EasyEdit repository's easyeditor.
"""
from __future__ import annotations

import argparse

import torch

# Import the adapter first: it imports easyeditor even where the host's multimodal
# dependencies (timm, torchvision, ...) cannot be installed, and registers "SPLIT".
from split_plugin.easyedit import SPLITHyperParams, cpu_fallback, host_info, summarize, undo_edits
from easyeditor import BaseEditor  # noqa: E402  (after the adapter)

from split_plugin.data import format_prompt

HPARAMS = "smollm2-135m-instruct"  # a YAML shipped in split_plugin/easyedit/configs/

PROMPTS = ["What is the capital of France?", "Which planet is known as the Red Planet?"]
TARGET_NEW = ["Rome", "Venus"]
GROUND_TRUTH = ["Paris", "Mars"]  # the negative answers SPLIT pushes away from


def generate(model, tok, question: str, max_new_tokens: int = 12) -> str:
    ids = tok(format_prompt(tok, question), return_tensors="pt", add_special_tokens=False)
    ids = {k: v.to(next(model.parameters()).device) for k, v in ids.items()}
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hparams", default=str(HPARAMS), help="a SPLIT hyperparameter YAML path, or a shipped one's name")
    args = parser.parse_args()

    hparams = SPLITHyperParams.from_hparams(args.hparams)
    print(f"host: easyeditor ({host_info().flavor}); model: {hparams.model_name}; layer {hparams.layer}, "
          f"{hparams.form} form, multiplier {hparams.resolved_multiplier()}")

    # The PyPI wheel moves everything to f"cuda:{device}"; cpu_fallback() runs it on the CPU
    # when there is no GPU (and does nothing when there is one).
    with cpu_fallback():
        editor = BaseEditor.from_hparams(hparams)
        before = {q: generate(editor.model, editor.tok, q) for q in PROMPTS}
        # keywords only: the wheel and the git version order edit()'s parameters differently
        metrics, model, weights_copy = editor.edit(prompts=PROMPTS, target_new=TARGET_NEW,
                                                   ground_truth=GROUND_TRUTH, verbose=False)

        # Each request was one edit. The wheel keeps edits by default (they stack up); the git
        # version undoes non-sequential ones. Start again from the unedited model and apply the
        # last edit's trained intervention (it travels in weights_copy) to generate with it.
        undo_edits(editor.model)
        with weights_copy.intervention.steer(editor.model, weights_copy.multiplier):
            after = generate(editor.model, editor.tok, PROMPTS[-1])

    print()
    for q in PROMPTS:
        print(f"Q: {q}\n   unedited: {before[q]!r}")
    print(f"   edited ({TARGET_NEW[-1]!r} over {GROUND_TRUTH[-1]!r}): {after!r}")
    print("\nper case (pre -> post):")
    for case in metrics:
        pre, post = case["pre"], case["post"]
        print(f"  {case['requested_rewrite']['prompt']!r}: pref_log_odds {pre['pref_log_odds']:+.2f} -> "
              f"{post['pref_log_odds']:+.2f}, util_log_odds {pre['util_log_odds']:+.2f} -> "
              f"{post['util_log_odds']:+.2f}, pref_acc {pre['pref_acc']:.0f} -> {post['pref_acc']:.0f}")
    print()
    summarize(metrics, title="SPLIT")
    # weights_copy.intervention.save_pretrained("outputs/quickstart-split") keeps the edit.


if __name__ == "__main__":
    main()
