"""Check the SPLIT adapter against the git version of EasyEdit's `easyeditor` (not on PyPI).

    python examples/check_git_host.py /path/to/EasyEdit            # the adapter on the git version
    python examples/check_git_host.py /path/to/EasyEdit --contrib  # the upstream contribution

The argument is an EasyEdit checkout (or any folder holding its `easyeditor/` package). It is
put first on sys.path, so it wins over an installed PyPI wheel; its Python dependencies must be
installed (its requirements.txt; on a machine with the PyPI wheel's set, `rouge` is the one
more that `easyeditor.evaluate` imports). Nothing of EasyEdit's is copied; everything below is
split_plugin's own calls of the host's public API, on a tiny random llama saved to a temporary
folder (BaseEditor loads it itself through its "llama" path) on the CPU (`device: cpu`, which
the git version accepts; no cuda redirect is used).

Steps, each one printed as PASS or FAIL (exit status 1 on any FAIL):
 1. `import split_plugin.easyedit` imports the checkout's easyeditor; detect_host() says "git"
 2. SPLIT is registered: ALG_DICT, CALLABLE_RESTORE_ALGS, BatchEditor.is_batchable_method,
    the wrapped compute_edit_quality, our summary_metrics (also as `easyeditor.summary_metrics`)
 3. BaseEditor.from_hparams(SPLITHyperParams) loads the tiny model itself
 4. edit(..., target_neg=..., sequential_edit=False): training used target_neg as the
    negative; our metric keys in every case's pre and post; logits afterwards bit-identical
    to before, no hooks left; the printed "Metrics Summary", logs/results.json and the
    cases' metric_meta hold our keys
 5. edit(..., sequential_edit=True) twice: both edits persist and compose (hooks stack, the
    second trained with the first active); undo_edits() then restores bit-identical logits
 6. batch_edit(..., sequential_edit=False) with batch_size 2: one intervention for both
    requests; restored bit-identical
 7. FT through the same host: our keys in its metrics, the model restored by the host
 8. the same for LoRA (restored by the host's peft unload())

With --contrib, the checkout is first copied to a temporary folder and
`split_plugin.easyedit.contrib` writes SPLIT into the copy (nothing of split_plugin.easyedit
patches the host there); a fresh Python then checks that `from easyeditor import BaseEditor,
SPLITHyperParams` works, nothing is patched, and an edit, its restore, its metrics and the
host's own summary (with our keys) work through the host's code alone.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROMPTS = ["Is the sky green?", "Say hi"]
TARGET_NEW = ["Yes", "hi"]
TARGET_NEG = ["No", "bye"]
GROUND_TRUTH = ["Maybe", "hello"]  # differs from target_neg: SPLIT must train against target_neg
FAST = dict(layer=2, epochs=3, train_batch_size=2, factors=[1.0, 2.0], multiplier=2.0, lr=0.05)

results: list[tuple[str, bool, str]] = []


def check(name: str, condition: bool, detail: str = "") -> bool:
    results.append((name, bool(condition), detail))
    print(f"{'PASS' if condition else 'FAIL'}  {name}" + (f"  ({detail})" if detail else ""), flush=True)
    return bool(condition)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("easyedit", type=Path, help="an EasyEdit checkout (the folder holding easyeditor/)")
    parser.add_argument("--verbose", action="store_true", help="keep the host's INFO logging")
    parser.add_argument("--contrib", action="store_true",
                        help="check the upstream contribution (written into a copy of the checkout)")
    args = parser.parse_args()
    checkout = args.easyedit.resolve()
    if not (checkout / "easyeditor" / "__init__.py").is_file():
        parser.error(f"{checkout} has no easyeditor/__init__.py")
    if args.contrib:
        return check_contrib(checkout)
    sys.path.insert(0, str(checkout))
    sys.path.insert(1, str(ROOT / "tests"))  # the test suite's tiny model and tokenizer
    sys.path.insert(2, str(ROOT))            # this checkout's split_plugin, whatever is installed

    import torch

    import split_plugin.easyedit as se
    from split_plugin.easyedit import apply as se_apply
    from split_plugin.safety import hooked_modules
    from tiny import tiny_model, tiny_tokenizer

    info = se.host_info()
    check("1. detect_host() reports the git version", info.flavor == "git"
          and str(checkout) in str(info.path), f"flavor={info.flavor}, editor module {info.path}")
    import easyeditor
    from easyeditor import BaseEditor

    if not args.verbose:
        logging.getLogger("easyeditor").setLevel(logging.WARNING)

    host = se.load_host_modules()
    check("2. SPLIT registered", host.alg_dict.ALG_DICT.get("SPLIT") is se.apply_split_to_model
          and host.editor.ALG_DICT is host.alg_dict.ALG_DICT
          and "SPLIT" in host.utils.CALLABLE_RESTORE_ALGS
          and host.batch_editor.is_batchable_method("SPLIT")
          and hasattr(host.editor.compute_edit_quality, "__split_plugin_wrapped__")
          and hasattr(host.editor.summary_metrics, "__split_plugin_wrapped__")
          and easyeditor.summary_metrics is host.editor.summary_metrics,
          f"CALLABLE_RESTORE_ALGS={sorted(host.utils.CALLABLE_RESTORE_ALGS)}")

    negatives: list[list[str]] = []
    real_train = se_apply.train

    def spy_train(model, tok, pairs, config, **kwargs):
        negatives.append([p.negative for p in pairs])
        return real_train(model, tok, pairs, config, **kwargs)

    se_apply.train = spy_train

    def probe(model):
        with torch.no_grad():
            return model(input_ids=torch.tensor([[5, 6, 7, 8, 9, 10]])).logits.clone()

    def keys_ok(metrics) -> bool:
        return all(set(se.METRIC_KEYS) <= set(case[phase]) for case in metrics for phase in ("pre", "post"))

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the host writes ./logs/run.log and ./logs/results.json
        folder = Path(tmp) / "tiny-llama"
        tiny_model("llama").save_pretrained(folder)
        tiny_tokenizer().save_pretrained(folder)
        hparams = se.SPLITHyperParams(model_name=str(folder), device="cpu", **FAST)
        editor = BaseEditor.from_hparams(hparams)
        check("3. BaseEditor loaded the tiny model itself", type(editor.model).__name__ == "LlamaForCausalLM"
              and type(hparams.model_name) is str, f"device {next(editor.model.parameters()).device}")
        model = editor.model
        before = probe(model)

        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            metrics, _, wc = editor.edit(prompts=PROMPTS, target_new=TARGET_NEW, ground_truth=GROUND_TRUTH,
                                         target_neg=TARGET_NEG, sequential_edit=False, verbose=False)
        summary = [line for line in printed.getvalue().splitlines() if line.startswith("Metrics Summary")]
        saved = json.loads(Path("logs/results.json").read_text())
        post = [round(c["post"]["pref_log_odds"], 3) for c in metrics]
        pre = [round(c["pre"]["pref_log_odds"], 3) for c in metrics]
        check("4a. non-sequential edit trained against target_neg", negatives == [["No"], ["bye"]],
              f"negatives {negatives}")
        check("4b. pref_log_odds, util_log_odds, pref_acc in pre and post", keys_ok(metrics)
              and pre != post, f"pref_log_odds pre {pre} -> post {post}")
        check("4c. non-sequential: logits bit-identical after edit()", torch.equal(probe(model), before)
              and hooked_modules(model) == [] and not wc.active and not se.active_edits(model))
        check("4d. our keys in the host's printed summary, logs/results.json and metric_meta",
              len(summary) == 1 and "pref_log_odds" in summary[0] and "pref_log_odds" in saved[0]["post"]
              and "log_odds" in metrics[0]["post"].get("metric_meta", {}), summary[0][:100] if summary else "")

        negatives.clear()
        metrics, edited, first = editor.edit(prompts=PROMPTS[:1], target_new=TARGET_NEW[:1],
                                             target_neg=TARGET_NEG[:1], sequential_edit=True, verbose=False)
        after_one = probe(model)
        metrics, edited, second = editor.edit(prompts=PROMPTS[1:], target_new=TARGET_NEW[1:],
                                              target_neg=TARGET_NEG[1:], sequential_edit=True, verbose=False)
        after = probe(model)
        check("5a. sequential_edit=True twice: both edits persist and stack", edited is model
              and not torch.equal(after, after_one) and not torch.equal(after_one, before)
              and se.active_edits(model) == [first, second] and bool(hooked_modules(model)),
              f"max |delta logit| {float((after - before).abs().max()):.4f}")
        check("5b. sequential: metric keys present", keys_ok(metrics))
        removed = se.undo_edits(model)
        check("5c. undo_edits() restores bit-identical logits", removed == 2 and torch.equal(probe(model), before)
              and hooked_modules(model) == [])

        negatives.clear()
        batch_editor = BaseEditor.from_hparams(dataclasses.replace(hparams, batch_size=2))
        batch_before = probe(batch_editor.model)
        metrics, _, wc = batch_editor.batch_edit(prompts=PROMPTS, target_new=TARGET_NEW, target_neg=TARGET_NEG,
                                                 sequential_edit=False, verbose=False)
        check("6. batch_edit: one intervention on both requests, restored bit-identical",
              negatives == [TARGET_NEG] and keys_ok(metrics) and torch.equal(probe(batch_editor.model), batch_before),
              f"negatives {negatives}")
        del batch_editor

        ft_fields = {f.name for f in dataclasses.fields(easyeditor.FTHyperParams)}
        ft_values = dict(
            alg_name="FT", model_name=str(folder), device="cpu", layers=[1], num_steps=2, lr=5e-3,
            weight_decay=0.0, kl_factor=0.0, norm_constraint=False, batch_size=1, max_length=40,
            model_parallel=False, objective_optimization="prompt_last",
            rewrite_module_tmp="model.layers.{}.mlp.down_proj.weight", layer_module_tmp="model.layers.{}",
            mlp_module_tmp="model.layers.{}.mlp", attn_module_tmp="model.layers.{}.self_attn",
            ln_f_module="model.norm", lm_head_module="lm_head")
        def host_method(step: str, host_hparams) -> None:
            """A built-in method through the same host: our keys beside its own, the model restored."""
            host_editor = BaseEditor.from_hparams(host_hparams)
            host_before = probe(host_editor.model)
            metrics, _, _ = host_editor.edit(prompts=PROMPTS[:1], target_new=TARGET_NEW[:1],
                                             ground_truth=TARGET_NEG[:1], sequential_edit=False, verbose=False)
            check(f"{step}: our keys next to the host's", keys_ok(metrics) and "rewrite_acc" in metrics[0]["post"]
                  and torch.equal(probe(host_editor.model), host_before))

        host_method("7. FT", easyeditor.FTHyperParams(**{k: v for k, v in ft_values.items() if k in ft_fields}))

        lora = easyeditor.LoRAHyperParams(
            alg_name="LoRA", model_name=str(folder), device="cpu", lora_type="lora", layers=[1], num_steps=2,
            lr=5e-3, weight_decay=0.0, kl_factor=0.0, norm_constraint=False, target_modules=["q_proj", "v_proj"],
            rank=4, lora_alpha=8, lora_dropout=0.0, batch_size=1)
        host_method("8. LoRA", lora)
        os.chdir(ROOT)

    return report()


def report() -> int:
    failed = [name for name, ok, _ in results if not ok]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


#: run in a fresh Python inside the patched copy: the host's code alone (only the multimodal
#: packages this machine cannot install are stubbed, as any import of the git version here needs)
CONTRIB_SCRIPT = r"""
import contextlib, io, json, os, sys, tempfile
import torch
from split_plugin.easyedit._host import tolerant_import  # stubs timm/torchvision-only modules
with tolerant_import():
    import easyeditor
from easyeditor import BaseEditor, SPLITHyperParams
from tiny import tiny_model, tiny_tokenizer
editor_module = sys.modules["easyeditor.editors.editor"]
out = {"hparams_module": SPLITHyperParams.__module__,
       "patched": [n for n in ("compute_edit_quality", "summary_metrics")
                   if hasattr(getattr(editor_module, n), "__split_plugin_wrapped__")],
       "registered": easyeditor.ALG_DICT["SPLIT"].__module__,
       "batchable": easyeditor.BatchEditor.is_batchable_method("SPLIT")}
os.chdir(tempfile.mkdtemp())
tiny_model("llama").save_pretrained("tiny-llama"); tiny_tokenizer().save_pretrained("tiny-llama")
hp = SPLITHyperParams(model_name=os.path.abspath("tiny-llama"), device="cpu", layer=2, epochs=3,
                      train_batch_size=2, factors=[1.0, 2.0], multiplier=2.0, lr=0.05)
editor = BaseEditor.from_hparams(hp)
probe = lambda: editor.model(input_ids=torch.tensor([[5, 6, 7, 8]])).logits.detach().clone()
before = probe()
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    metrics, _, _ = editor.edit(prompts=["Is the sky green?"], target_new=["Yes"], target_neg=["No"],
                                sequential_edit=False, verbose=False)
out["post_keys"] = sorted(metrics[0]["post"])
out["meta"] = sorted(metrics[0]["post"].get("metric_meta", {}))
out["summary"] = [l for l in printed.getvalue().splitlines() if l.startswith("Metrics Summary")]
out["restored"] = bool(torch.equal(probe(), before))
out["results_json"] = "pref_log_odds" in json.load(open("logs/results.json"))[0]["post"]
print("RESULT " + json.dumps(out))
"""


def check_contrib(checkout: Path) -> int:
    """Write the contribution into a copy of the checkout and check it from a fresh Python."""
    sys.path.insert(0, str(ROOT))
    from split_plugin.easyedit.contrib import write_contribution

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "EasyEdit"
        shutil.copytree(checkout, copy, ignore=shutil.ignore_patterns(".git", "figs", "data"))
        changed = write_contribution(copy)
        check("c1. contrib wrote the PR's files", "easyeditor/models/split/split_main.py" in changed
              and "easyeditor/util/alg_dict.py" in changed, f"{len(changed)} files")
        check("c2. a second run changes nothing", write_contribution(copy) == [])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(copy), str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
        run = subprocess.run([sys.executable, "-c", CONTRIB_SCRIPT], env=env, capture_output=True, text=True,
                             timeout=900)
        lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
        if not check("c3. the patched checkout imports and edits", run.returncode == 0 and bool(lines),
                     run.stderr.strip().splitlines()[-1] if run.returncode else ""):
            print(run.stderr[-3000:])
            return report()
        out = json.loads(lines[0][len("RESULT "):])
        check("c4. `from easyeditor import BaseEditor, SPLITHyperParams`: the host's own SPLIT, nothing patched",
              out["hparams_module"] == "easyeditor.models.split.split_hparams" and out["patched"] == []
              and out["registered"] == "split_plugin.easyedit.apply" and out["batchable"], str(out["patched"]))
        check("c5. an edit restores bit-exact; our keys in its metrics and metric_meta", out["restored"]
              and {"pref_log_odds", "util_log_odds", "pref_acc"} <= set(out["post_keys"]) and "log_odds" in out["meta"])
        check("c6. the host's own summary_metrics prints and saves our keys", len(out["summary"]) == 1
              and "pref_log_odds" in out["summary"][0] and out["results_json"], out["summary"][0][:90] if out["summary"] else "")
    return report()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:  # an unexpected error is a failed check too
        traceback.print_exc()
        sys.exit(1)
