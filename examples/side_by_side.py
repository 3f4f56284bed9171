"""FT, ROME and SPLIT on the same requests through EasyEdit's BaseEditor, in one table.

    python examples/side_by_side.py                      # a few minutes on 2 CPU cores
    python examples/side_by_side.py --methods FT,SPLIT   # skip ROME (the slowest here)

Every method edits the embedded SmolLM2-135M-Instruct (loaded once and shared; each edit is
undone by the host before the next), and every case is scored twice: by the host's metrics
(rewrite_acc: teacher-forced token accuracy of `prompt + " " + target_new`) and by ours
(pref_log_odds / util_log_odds / pref_acc: target_new against the ground truth, formatted
with the chat template as SPLIT trains), before ("pre") and after ("post") the edit.
ROME runs without its covariance statistics (`mom2_adjustment: false`), as it must offline.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

# the adapter first: it imports easyeditor (tolerating missing multimodal packages) and registers SPLIT
from split_plugin.easyedit import (
    SPLITHyperParams,
    cpu_fallback,
    enable_log_odds_metrics,
    format_table,
    host_info,
    preloaded,
    summarize,
)
from easyeditor import BaseEditor, FTHyperParams, ROMEHyperParams  # noqa: E402

from split_plugin.models import load_default_model

HPARAMS = Path(__file__).resolve().parents[1] / "hparams" / "SPLIT" / "smollm2-135m-instruct.yaml"

REQUESTS = dict(
    prompts=["What is the capital of France? Answer in one word.",
             "Which planet is known as the Red Planet? Answer in one word."],
    target_new=["Rome", "Venus"],
    ground_truth=["Paris", "Mars"],
    subject=["France", "Red Planet"],  # ROME edits the subject's last token
    # unrelated facts that should survive the edit (the host's locality metric)
    locality_inputs={"neighborhood": {
        "prompt": ["What is the capital of Germany? Answer in one word.",
                   "Which planet is the largest in the solar system? Answer in one word."],
        "ground_truth": ["Berlin", "Jupiter"]}},
)

LLAMA_MODULES = dict(layer_module_tmp="model.layers.{}", mlp_module_tmp="model.layers.{}.mlp",
                     attn_module_tmp="model.layers.{}.self_attn", ln_f_module="model.norm",
                     lm_head_module="lm_head")


def _build(cls, **values):
    """A host hyperparameter object, passing only the fields this host version defines."""
    names = {f.name for f in dataclasses.fields(cls)}
    if "objective_optimization" in names:  # git version's FT
        values.setdefault("objective_optimization", "prompt_last")
    return cls(**{k: v for k, v in values.items() if k in names})


def method_hparams(method: str, model, tok):
    model_name = preloaded(model, tok, "smollm2-135m-instruct")  # every editor gets this same model
    num_layers = model.config.num_hidden_layers
    if method == "FT":  # FT-L: the down projection of one layer, loss on the prompt's last token
        return _build(FTHyperParams, alg_name="FT", model_name=model_name, device=0, layers=[20],
                      num_steps=15, lr=5e-4, weight_decay=0.0, kl_factor=0.0, norm_constraint=False,
                      rewrite_module_tmp="model.layers.{}.mlp.down_proj.weight", batch_size=1,
                      max_length=40, model_parallel=False, **LLAMA_MODULES)
    if method == "ROME":
        return _build(ROMEHyperParams, alg_name="ROME", model_name=model_name, device=0, layers=[5],
                      fact_token="subject_last", v_num_grad_steps=10, v_lr=0.5,
                      v_loss_layer=num_layers - 1, v_weight_decay=1e-3, clamp_norm_factor=4.0,
                      kl_factor=0.0625, mom2_adjustment=False, context_template_length_params=[[5, 5]],
                      rewrite_module_tmp="model.layers.{}.mlp.down_proj", mom2_dataset="wikipedia",
                      mom2_n_samples=1000, mom2_dtype="float32", stats_dir="./data/stats",
                      max_length=40, model_parallel=False, **LLAMA_MODULES)
    if method == "SPLIT":
        return SPLITHyperParams.from_hparams(HPARAMS).with_model(model, tok, "smollm2-135m-instruct")
    raise SystemExit(f"unknown method {method!r}; choose from FT, ROME, SPLIT")


def edit(editor, requests: dict):
    """One BaseEditor.edit that the host undoes afterwards, in either host version."""
    if host_info().flavor == "wheel":
        return editor.edit(keep_original_weight=True, verbose=False, **requests)
    return editor.edit(target_neg=requests["ground_truth"], sequential_edit=False, verbose=False, **requests)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="FT,ROME,SPLIT", help="comma-separated: FT, ROME, SPLIT")
    args = parser.parse_args()
    methods = [m.strip().upper() for m in args.methods.split(",") if m.strip()]

    model, tok = load_default_model()
    enable_log_odds_metrics("all")  # our metrics for FT and ROME too, not only SPLIT
    print(f"host: easyeditor ({host_info().flavor}); model: SmolLM2-135M-Instruct "
          f"({model.config.num_hidden_layers} layers), loaded once for all methods")

    summaries, failures = {}, {}
    with cpu_fallback():  # the wheel hard-codes cuda devices; a no-op with CUDA
        for method in methods:
            hparams = method_hparams(method, model, tok)
            start = time.time()
            try:
                editor = BaseEditor.from_hparams(hparams)
                metrics, _, _ = edit(editor, REQUESTS)
            except Exception as exc:  # report and go on with the other methods
                failures[method] = f"{type(exc).__name__}: {exc}"
                print(f"{method} failed: {failures[method]}", file=sys.stderr)
                continue
            summaries[method] = summarize(metrics, print_table=False)
            print(f"{method}: {len(metrics)} edits in {time.time() - start:.0f} s")

    print("\nmeans over cases, pre -> post (rewrite_acc and locality: the host's metrics; "
          "pref/util log-odds and pref_acc: split_plugin's)\n")
    print(format_table(summaries))
    for method, error in failures.items():
        print(f"{method}: failed ({error})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
