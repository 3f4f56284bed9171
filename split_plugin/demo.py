"""The main job: CAA, SFT, SPLIT and SPLIT+KL side by side on the embedded model, one report.

Every method is compared at matched strength: multipliers chosen so that the edit's median
norm is a fixed fraction of the median residual-stream norm at the layer (see strength.py).
"""
from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .analysis import sweep, write_report
from .config import TrainConfig
from .data import HELDOUT_WORDS, load_heldout_text, load_pairs
from .fileio import atomic_dir
from .generation import generate
from .presets import preset_path
from .errors import SplitPluginError
from .intervention import FORMS, Intervention
from .models import load_default_model
from .strength import edit_ratio, matched_multipliers
from .trainer import train

STRENGTHS = (-0.25, 0.0, 0.05, 0.1, 0.25, 0.5)  # |m * delta| / median |h| at the layer
TABLE_STRENGTHS = (0.0, 0.05, 0.1, 0.25, 0.5)
TRAIN_PAIRS = 96     # of the 216 bundled training pairs } keep the demo under 10 minutes
TEST_PAIRS = 48      # of the 64 bundled test pairs       } on 2 CPU cores
GENERATION_PROMPTS = 3


@dataclass
class MethodRun:
    name: str
    intervention: Intervention
    seconds: float
    multipliers: list[float]


def _methods(forms: list[str]) -> list[tuple[str, str]]:
    """(display name, preset) pairs: the two baselines, then SPLIT in each requested form."""
    runs = [("CAA", "caa-vector"), ("SFT", "sft-vector")]
    names = {"vector": "SPLIT", "lora": "SPLIT-lora", "local_weight": "SPLIT-local_weight"}
    runs += [(names[f], f"split-{f}") for f in forms]
    if "vector" in forms:
        runs.append(("SPLIT+KL", "split-kl-vector"))  # the utility-preserving option
    return runs


def _train_all(model, tokenizer, pairs, forms: list[str], quick: bool, text: str,
               layer: int | None) -> list[MethodRun]:
    runs = []
    for name, preset in _methods(forms):
        values = TrainConfig.from_yaml(preset_path(preset)).to_dict()
        values.update({"epochs": 1} if quick else {}, **({"layer": layer} if layer is not None else {}))
        config = TrainConfig.from_dict(values)
        print(f"[demo] training {name} ({preset}.yaml) on {len(pairs)} pairs", flush=True)
        start = time.perf_counter()
        intervention = train(model, tokenizer, pairs, config)
        seconds = time.perf_counter() - start
        ratio = edit_ratio(model, tokenizer, intervention, text)
        runs.append(MethodRun(name, intervention, seconds, matched_multipliers(ratio, STRENGTHS)))
    return runs


def _table(runs: list[MethodRun], results: dict) -> list[dict]:
    rows = []
    for run in runs:
        by_m = {round(r["multiplier"], 6): r for r in results[run.name].summary()}
        for strength, m in zip(STRENGTHS, run.multipliers):
            if strength not in TABLE_STRENGTHS:
                continue
            r = by_m[round(m, 6)]
            rows.append({"method": run.name, "form": run.intervention.form,
                         "trainable_params": run.intervention.num_parameters(),
                         "train_seconds": round(run.seconds, 1), "strength": strength,
                         "multiplier": round(m, 3), "accuracy": round(r["accuracy"], 3),
                         "pref_log_odds": round(r["pref_mean"], 3), "util_log_odds": round(r["util_mean"], 3),
                         "util_undefined": r["util_undefined"],
                         "ppl_increase_pct": round(100 * r["ppl_increase"], 1)})
    return rows


def _markdown_table(rows: list[dict]) -> str:
    head = ["method", "params", "strength", "m", "accuracy", "pref log-odds", "util log-odds",
            "ppl increase"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {r['method']} | {r['trainable_params']} | {r['strength']:.2f} | {r['multiplier']:g} | "
                     f"{r['accuracy']:.3f} | {r['pref_log_odds']:+.2f} | {r['util_log_odds']:+.2f} | "
                     f"{r['ppl_increase_pct']:+.1f}% |")
    return "\n".join(lines)


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _generations(model, tokenizer, runs: list[MethodRun], prompts: list[str]) -> str:
    """Greedy answers to `prompts`, unsteered and per method at strength 0.25 (one batch per method)."""
    lines = ["# Steered generations (greedy), strength 0.25 of the residual norm", ""]
    multipliers = {run.name: run.multipliers[STRENGTHS.index(0.25)] for run in runs}
    texts = {None: generate(model, tokenizer, prompts, max_new_tokens=40)}
    for run in runs:
        texts[run.name] = generate(model, tokenizer, prompts, run.intervention,
                                   multiplier=multipliers[run.name], max_new_tokens=40)
    for i, prompt in enumerate(prompts):
        lines += [f"## {prompt}", "", f"- **unsteered**: {texts[None][i]}"]
        lines += [f"- **{run.name}** (m = {multipliers[run.name]:.3g}): {texts[run.name][i]}" for run in runs]
        lines.append("")
    return "\n".join(lines)


def run_demo(out_dir: str | Path = "reports/demo", concept: str = "optimism", quick: bool = False,
             forms: str = "vector", layer: int | None = None, model_and_tokenizer=None) -> Path:
    """Train, sweep and report; returns the report folder.

    `layer` overrides the presets' layer 15; `model_and_tokenizer` replaces the embedded model
    (the tests pass a tiny one).
    """
    torch.manual_seed(0)
    start = time.perf_counter()
    form_list = [f.strip() for f in forms.split(",") if f.strip()]
    unknown = [f for f in form_list if f not in FORMS]
    if not form_list or unknown:
        raise SplitPluginError(f"--forms {forms!r}: use a comma list of {FORMS}")
    model, tokenizer = model_and_tokenizer or load_default_model()
    train_pairs = load_pairs(concept, split="train", limit=48 if quick else TRAIN_PAIRS)
    test_pairs = load_pairs(concept, split="test", limit=24 if quick else TEST_PAIRS)
    text = load_heldout_text(words=HELDOUT_WORDS)
    stages = {"loading": time.perf_counter() - start}
    runs = _train_all(model, tokenizer, train_pairs, form_list, quick, text, layer)
    stages["training"] = sum(run.seconds for run in runs)
    results = {}
    for run in runs:
        print(f"[demo] sweeping {run.name} over {len(test_pairs)} test pairs", flush=True)
        results[run.name] = sweep(model, tokenizer, run.intervention, test_pairs, run.multipliers,
                                  heldout_text=text, bootstrap=300)
    stages["sweeps"] = sum(r.metadata["seconds"] for r in results.values())
    rows = _table(runs, results)
    prompts = [p.question for p in test_pairs[:GENERATION_PROMPTS]]
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        written = time.perf_counter()
        write_report(results, tmp / "sweep", title=f"{concept}: CAA vs SFT vs SPLIT vs SPLIT+KL")
        (tmp / "table.csv").write_text(_csv(rows), encoding="utf-8")
        table = _markdown_table(rows)
        (tmp / "generations.md").write_text(_generations(model, tokenizer, runs, prompts), encoding="utf-8")
        for run in runs:  # small (one vector each): kept so `split-steer sweep` can re-analyse them
            run.intervention.save_pretrained(str(tmp / "interventions" / run.name))
        stages["report and generations"] = time.perf_counter() - written
        timing = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in stages.items())
        (tmp / "README.md").write_text(
            f"# Demo: {concept} on SmolLM2-135M-Instruct\n\nCommand: `split-steer demo"
            f"{' --quick' if quick else ''} --concept {concept} --forms {forms}`; "
            f"{len(train_pairs)} train / {len(test_pairs)} test pairs; "
            f"{time.perf_counter() - start:.0f} s in all ({timing}).\n\nStrength = median |m * delta| / median "
            "residual norm at the layer (matched across methods).\n\n" + table +
            "\n\nPlots and fits: `sweep/` (frontier.png: utility vs preference per method). "
            "Generations: `generations.md`. Trained interventions: `interventions/<method>/` "
            f"(e.g. `split-steer sweep --intervention {out_dir}/interventions/SPLIT --data {concept} "
            "--multipliers -12:12:2 --out sweep-SPLIT`). How to read preference and utility log-odds: "
            "`sweep/report.md`.\n", encoding="utf-8")
    print("\n" + table + f"\n\n[demo] report written to {out_dir} "
          f"({time.perf_counter() - start:.0f} s: {timing})", flush=True)
    return out_dir
