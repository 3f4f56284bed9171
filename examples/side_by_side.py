"""FT, ROME, LoRA and SPLIT on the same requests through EasyEdit's BaseEditor, in one table.

    python examples/side_by_side.py                        # PyPI wheel (its LoRA fails with current peft)
    PYTHONPATH=/tmp/easyedit-head python examples/side_by_side.py   # a git checkout's easyeditor
    python examples/side_by_side.py --methods FT,SPLIT     # a subset

Every method edits a fresh copy of the embedded SmolLM2-135M-Instruct (each edit is undone by
the host), and every case is scored twice, before ("pre") and after ("post") the edit, in the
host's own format (`prompt + " " + answer`, no chat template): by the host's metrics
(rewrite_acc: teacher-forced token accuracy of target_new; rephrase_acc; locality) and by ours
(pref_log_odds / pref_acc: target_new against ground_truth on the edit prompt, rephrase_* on
the rephrase prompt, locality_* the unrelated fact's answer against target_new). SPLIT trains
in that same format (`request_format: host`, the default). ROME runs without its covariance
statistics (`mom2_adjustment: false`), as it must offline.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

# the adapter first: it imports easyeditor (tolerating missing multimodal packages) and registers SPLIT
from split_plugin.easyedit import (
    SPLITHyperParams,
    cpu_fallback,
    format_table,
    host_info,
    preloaded,
    summarize,
)
from easyeditor import BaseEditor, FTHyperParams, LoRAHyperParams, ROMEHyperParams  # noqa: E402

from split_plugin.models import load_default_model

METHODS = ("FT", "ROME", "LoRA", "SPLIT")

REQUESTS = dict(
    prompts=["What is the capital of France? Answer in one word.",
             "Which planet is known as the Red Planet? Answer in one word."],
    target_new=["Rome", "Venus"],
    ground_truth=["Paris", "Mars"],
    subject=["France", "Red Planet"],  # ROME edits the subject's last token
    rephrase_prompts=["Name the capital city of France in one word.",
                      "In one word, which planet is called the Red Planet?"],
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
    model_name = preloaded(model, tok, "smollm2-135m-instruct")  # the editor gets this loaded model
    num_layers = model.config.num_hidden_layers
    device = 0 if host_info().flavor == "wheel" else "cpu"  # the wheel takes only an index (cpu_fallback)
    if method == "FT":  # FT-L: the down projection of one layer, loss on the prompt's last token
        return _build(FTHyperParams, alg_name="FT", model_name=model_name, device=device, layers=[20],
                      num_steps=15, lr=5e-4, weight_decay=0.0, kl_factor=0.0, norm_constraint=False,
                      rewrite_module_tmp="model.layers.{}.mlp.down_proj.weight", batch_size=1,
                      max_length=40, model_parallel=False, **LLAMA_MODULES)
    if method == "ROME":
        return _build(ROMEHyperParams, alg_name="ROME", model_name=model_name, device=device, layers=[5],
                      fact_token="subject_last", v_num_grad_steps=10, v_lr=0.5,
                      v_loss_layer=num_layers - 1, v_weight_decay=1e-3, clamp_norm_factor=4.0,
                      kl_factor=0.0625, mom2_adjustment=False, context_template_length_params=[[5, 5]],
                      rewrite_module_tmp="model.layers.{}.mlp.down_proj", mom2_dataset="wikipedia",
                      mom2_n_samples=1000, mom2_dtype="float32", stats_dir="./data/stats",
                      max_length=40, model_parallel=False, **LLAMA_MODULES)
    if method == "LoRA":  # the host's LoRA on q/v projections of every layer
        return _build(LoRAHyperParams, alg_name="LoRA", model_name=model_name, device=device, lora_type="lora",
                      layers=[], num_steps=30, lr=5e-3, weight_decay=0.0, kl_factor=0.0, norm_constraint=False,
                      target_modules=["q_proj", "v_proj"], rank=8, lora_alpha=32, lora_dropout=0.0,
                      batch_size=1, max_length=40, model_parallel=False)
    if method == "SPLIT":  # the shipped YAML (request_format: host, the default)
        return SPLITHyperParams.from_hparams("smollm2-135m-instruct").with_model(model, tok, "smollm2-135m-instruct")
    raise SystemExit(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def edit(editor, requests: dict):
    """One BaseEditor.edit that the host undoes afterwards, in either host version."""
    if host_info().flavor == "wheel":
        return editor.edit(keep_original_weight=True, verbose=False, **requests)
    return editor.edit(target_neg=requests["ground_truth"], sequential_edit=False, verbose=False, **requests)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from " + ", ".join(METHODS))
    args = parser.parse_args()
    names = {m.upper(): m for m in METHODS}
    methods = [names.get(m.strip().upper(), m.strip()) for m in args.methods.split(",") if m.strip()]
    print(f"host: easyeditor ({host_info().flavor}); model: SmolLM2-135M-Instruct, a fresh copy per method")

    summaries, failures = {}, {}
    with cpu_fallback():  # the wheel hard-codes cuda devices; a no-op with CUDA or the git version
        for method in methods:
            model, tok = load_default_model()
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

    print("\nmeans over cases, pre -> post (rewrite_acc, rephrase_acc, locality.*: the host's metrics; "
          "*log_odds and *pref_acc: split_plugin's, in the host's format)\n")
    print(format_table(summaries))
    for method, error in failures.items():
        print(f"{method}: failed ({error})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
