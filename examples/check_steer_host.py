"""Check our methods inside EasyEdit2's own steering pipeline (the `steer/` of an EasyEdit checkout).

    pip install --target /tmp/steer-deps -r requirements-easyedit-steer.txt   # once, never into the env
    PYTHONPATH=/tmp/steer-deps python examples/check_steer_host.py /path/to/EasyEdit

The argument is an EasyEdit git checkout (the folder holding steer/); it goes first on
sys.path. On the embedded SmolLM2-135M-Instruct (CPU, a few pairs, about 2-3 minutes):
 1. split_plugin.easyedit2.register() adds our four methods to steer's registries (with the
    repair the git head needs, reported when used)
 2. BaseVectorGenerator (the framework's class, from a hydra-style config) trains SPLIT
    (vector form) and CAA and saves them where the framework keeps vectors
 3. for each: BaseVectorApplier applies it from those folders at the method file's multiplier
    and generates (greedy) with `generate_orig_output`; the steered text differs from the
    unsteered one
 4. the framework model's logits equal those of a plain model steered by our Intervention
    directly (|diff| <= 1e-5), and setting the slots aside gives the plain model's logits back
 5. our log-odds of the applied model, steered and unsteered (log_odds_report)
Exit status 1 on any FAIL. Nothing of EasyEdit's is copied; the framework's get_model() picks
its wrapper by name, so the embedded model is linked under a name holding "llama".
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYER, TRAIN_PAIRS, PROBE_PAIRS = 15, 6, 4
METHODS = {  # alg_name -> (method file lines, multiplier)
    "split_plugin_split": ("intervention_method: vector\nn_epochs: 2\nbatch_size: 3\nlr: 0.08\n"
                           "steering_factors: [4.0, 8.0, 12.0]\npreference_pairs: [orig_add, orig_sub]\n", 12.0),
    "split_plugin_caa": ("batch_size: 3\n", 4.0),
}
results: list[tuple[str, bool]] = []


def check(name: str, ok: bool, detail: str = "") -> bool:
    results.append((name, bool(ok)))
    print(f"{'PASS' if ok else 'FAIL'}  {name}" + (f"  ({detail})" if detail else ""), flush=True)
    return bool(ok)


def framework_items(pairs) -> list[dict]:
    return [{"question": p.question, "matching": p.positive, "not_matching": p.negative} for p in pairs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("easyedit", type=Path, help="an EasyEdit checkout (the folder holding steer/)")
    args = parser.parse_args()
    checkout = args.easyedit.resolve()
    if not (checkout / "steer" / "utils" / "alg_dict.py").is_file():
        parser.error(f"{checkout} has no steer/utils/alg_dict.py")
    sys.path[:0] = [str(checkout), str(ROOT)]
    import torch
    from omegaconf import OmegaConf

    import split_plugin as sp
    import split_plugin.easyedit2 as se2
    from split_plugin.easyedit2 import host
    from split_plugin.models import default_gguf_path, ensure_converted

    try:
        se2.register()
        repaired = "not needed"
    except sp.SplitPluginError as exc:
        print(f"       the head needs the repair: {str(exc)[:160]}...")
        se2.register(repair=True)
        repaired = f"repaired {sorted(host.PACKAGES)}"
    from steer.utils.alg_dict import HYPERPARAMS_CLASS_DICT, METHODS_CLASS_DICT
    from steer.vector_appliers.vector_applier import BaseVectorApplier
    from steer.vector_generators.vector_generators import BaseVectorGenerator
    check("1. our methods in steer's registries", all(
        METHODS_CLASS_DICT[n]["train"] is se2.generate and METHODS_CLASS_DICT[n]["apply"] is se2.apply
        and set(HYPERPARAMS_CLASS_DICT[n]) == {"train", "apply"} for n in se2.METHODS), repaired)

    pairs = sp.load_pairs("power-seeking")
    train_items, probe_items = framework_items(pairs[:TRAIN_PAIRS]), framework_items(pairs[-PROBE_PAIRS:])
    plain, tok = sp.load_default_model()
    probe = tok([f"{probe_items[0]['question']}\n"], return_tensors="pt")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = tmp / "smollm2-llama"
        model_dir.symlink_to(ensure_converted(default_gguf_path()))
        common = dict(model_name_or_path=str(model_dir), device="cpu", dtype="fp32", seed=42,
                      use_chat_template=True, system_prompt="")
        for alg, (lines, _) in METHODS.items():
            (tmp / f"{alg}.yaml").write_text(f"alg_name: {alg}\nlayers: [{LAYER}]\n{lines}"
                                             f"generate:\n  save_vectors: true\napply:\n  multipliers: [{METHODS[alg][1]}]\n")
        started = time.time()
        generator = BaseVectorGenerator(OmegaConf.create(dict(
            common, steer_train_hparam_paths=[str(tmp / f"{a}.yaml") for a in METHODS],
            steer_vector_output_dirs=[str(tmp / "vectors")], steer_train_dataset=["pw"], save_vectors=True)))
        vectors = generator.generate_vectors({"pw": train_items})["pw"]
        saved = {a: tmp / "vectors" / "pw" / f"{a}_vector" for a in METHODS}
        check("2. BaseVectorGenerator trained and saved both", all(
            isinstance(vectors[a][f"layer_{LAYER}"], sp.Intervention)
            and (saved[a] / f"layer_{LAYER}" / "config.json").is_file() for a in METHODS),
            f"{time.time() - started:.0f} s, {sorted(str(p.relative_to(tmp)) for p in saved.values())}")

        for alg, (_, multiplier) in METHODS.items():
            applier = BaseVectorApplier(OmegaConf.create(dict(
                common, apply_steer_hparam_paths=[str(tmp / f"{alg}.yaml")], steer_vector_load_dir=[str(saved[alg])],
                generation_output_dir=str(tmp / "generation" / alg), generation_data_size=None,
                generate_orig_output=True, num_responses=1, steer_from_end_position=False)))
            applier.apply_vectors()
            out = applier.generate({"probe": [{"input": item["question"]} for item in probe_items]},
                                   max_new_tokens=12, do_sample=False)
            changed = sum(r["pred"] != r["orig_pred"] for r in out)
            check(f"3. {alg}: the framework's steered generation differs from its unsteered one",
                  changed > 0, f"{changed}/{len(out)} differ; m={multiplier}; steered {out[0]['pred'][0][:50]!r} "
                  f"vs {out[0]['orig_pred'][0][:50]!r}")

            intervention = sp.Intervention.from_pretrained(str(saved[alg] / f"layer_{LAYER}"))
            with torch.no_grad():
                framework = applier.model.model(**probe).logits
                with intervention.steer(plain, multiplier):
                    direct = plain(**probe).logits
                with se2.evaluation.slots_aside(applier.model):
                    unsteered = applier.model.model(**probe).logits
                base = plain(**probe).logits
            diff = (framework - direct).abs().max().item()
            check(f"4. {alg}: via the framework == our Intervention.steer directly", diff <= 1e-5
                  and torch.allclose(unsteered, base, atol=1e-5) and (framework - base).abs().max().item() > 1e-3,
                  f"max |diff| {diff:.2e}, steering moved logits by {(framework - base).abs().max().item():.2f}")

            report = se2.log_odds_report(applier.model, probe_items, use_chat_template=True)
            check(f"5. {alg}: log-odds beside the framework's outputs", all(v == v for v in report.values())
                  and report["pref_log_odds"] != report["orig_pref_log_odds"],
                  ", ".join(f"{k} {v:+.3f}" for k, v in report.items()))
            del applier
    failed = [name for name, ok in results if not ok]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        sys.exit(main())
    except Exception:  # an unexpected error is a failed check too
        traceback.print_exc()
        sys.exit(1)
