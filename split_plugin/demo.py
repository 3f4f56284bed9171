"""The main job: CAA, SFT, SPLIT and SPLIT-lora side by side on the embedded model, under the protocol.

Every method is evaluated the same way (analysis/protocol.py): on validation pairs held back
from training, over a log-spaced grid of relative edit strengths and its own trained
multipliers; its strength within +5% held-out perplexity is chosen there, and only then are the
test pairs scored, at that strength.
"""
from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .analysis import write_report
from .analysis.plots import plot_protocol
from .analysis.protocol import BUDGETS, Evaluation, evaluate
from .analysis.reuse import SweepCache
from .config import TrainConfig
from .data import HELDOUT_WORDS, load_heldout_text, load_pairs
from .errors import SplitPluginError
from .fileio import atomic_dir
from .generation import generate
from .intervention import Intervention
from .models import load_default_model
from .presets import preset_path
from .trainer import train

#: display name -> preset; by default the demo runs the two baselines and SPLIT in two forms: the tuned
#: vector recipe (benchmarks/tune.py's choice, see BENCHMARKS.md) and the low-rank update
METHODS = {"CAA": "caa-vector", "SFT": "sft-vector", "SPLIT": "split-vector", "SPLIT-lora": "split-lora",
           "SPLIT+KL": "split-kl-vector", "SPLIT-tuned": "split-tuned-vector",
           "SPLIT-local_weight": "split-local_weight"}
DEFAULT_METHODS = "CAA,SFT,SPLIT-tuned,SPLIT-lora"
TRAIN_PAIRS = 64     # of the bundled training pairs before the validation ones } a subset, to keep
VAL_PAIRS = 24       # the last training pairs: they choose each method's strength } the demo short
TEST_PAIRS = 48      # of the 64 bundled test pairs                               } on 2 CPU cores
BUDGET = 0.05        # the table's perplexity budget; the plot shows every budget
GENERATION_PROMPTS = 3


@dataclass
class MethodRun:
    name: str
    intervention: Intervention
    evaluation: Evaluation


def parse_methods(methods: str) -> list[str]:
    """The comma list of `--methods`, checked against METHODS."""
    names = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if not names or unknown:
        raise SplitPluginError(f"--methods {methods!r}: use a comma list of {list(METHODS)}")
    return names


def _split(concept: str, quick: bool):
    """Training, validation (the last VAL_PAIRS training pairs, never trained on) and test pairs."""
    pairs = load_pairs(concept, split="train")
    train_pairs, val_pairs = pairs[:-VAL_PAIRS][:32 if quick else TRAIN_PAIRS], pairs[-VAL_PAIRS:]
    return train_pairs, val_pairs, load_pairs(concept, split="test", limit=24 if quick else TEST_PAIRS)


def _run(model, tokenizer, name: str, data, quick: bool, text: str, layer: int | None,
         cache: SweepCache) -> MethodRun:
    train_pairs, val_pairs, test_pairs = data
    values = TrainConfig.from_yaml(preset_path(METHODS[name])).to_dict()
    values.update({"epochs": 1} if quick else {}, **({"layer": layer} if layer is not None else {}))
    print(f"[demo] training {name} ({METHODS[name]}.yaml) on {len(train_pairs)} pairs", flush=True)
    start = time.perf_counter()
    intervention = train(model, tokenizer, train_pairs, TrainConfig.from_dict(values))
    seconds = time.perf_counter() - start
    print(f"[demo] evaluating {name}: {len(val_pairs)} validation pairs choose, {len(test_pairs)} test pairs score",
          flush=True)
    evaluation = evaluate(model, tokenizer, intervention, val_pairs, {"test": test_pairs}, text, name=name,
                          train_seconds=seconds, cache=cache)
    return MethodRun(name, intervention, evaluation)


def _rows(runs: list[MethodRun]) -> list[dict]:
    rows = []
    for run in runs:
        for budget in BUDGETS:
            r = run.evaluation.at_budget(budget)
            rows.append({"method": run.name, "form": run.intervention.form,
                         "trainable_params": run.intervention.num_parameters(),
                         "train_seconds": round(run.evaluation.train_seconds, 1), "budget_pct": round(100 * budget),
                         "strength": round(r["strength"], 4), "multiplier": round(r["multiplier"], 4),
                         "chosen_from": r["source"], "val_accuracy": round(r["val_accuracy"], 3),
                         "test_accuracy": round(r["accuracy"], 3), "pref_log_odds": round(r["pref_mean"], 3),
                         "util_log_odds": round(r["util_mean"], 3), "ppl_increase_pct": round(100 * r["ppl_increase"], 1)})
    return rows


def _markdown_table(rows: list[dict]) -> str:
    head = ["method", "params", "strength", "m (from)", "val acc", "test acc", "pref log-odds",
            "util log-odds", "ppl increase"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["budget_pct"] != round(100 * BUDGET):
            continue
        lines.append(f"| {r['method']} | {r['trainable_params']} | {r['strength']:.3g} | {r['multiplier']:g} "
                     f"({r['chosen_from']}) | {r['val_accuracy']:.3f} | {r['test_accuracy']:.3f} | "
                     f"{r['pref_log_odds']:+.2f} | {r['util_log_odds']:+.2f} | {r['ppl_increase_pct']:+.1f}% |")
    return "\n".join(lines)


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _generations(model, tokenizer, runs: list[MethodRun], prompts: list[str]) -> str:
    """Greedy answers to `prompts`, unsteered and per method at its +5% strength (one batch per method)."""
    lines = [f"# Steered generations (greedy), each method at its strength chosen within +{BUDGET:.0%} "
             "perplexity on validation pairs", ""]
    multipliers = {run.name: run.evaluation.choose(BUDGET).multiplier for run in runs}
    texts = {None: generate(model, tokenizer, prompts, max_new_tokens=40)}
    for run in runs:
        texts[run.name] = generate(model, tokenizer, prompts, run.intervention,
                                   multiplier=multipliers[run.name], max_new_tokens=40)
    for i, prompt in enumerate(prompts):
        lines += [f"## {prompt}", "", f"- **unsteered**: {texts[None][i]}"]
        lines += [f"- **{run.name}** (m = {multipliers[run.name]:.3g}): {texts[run.name][i]}" for run in runs]
        lines.append("")
    return "\n".join(lines)


def _readme(concept: str, quick: bool, methods: str, data, seconds: float, timing: str, table: str) -> str:
    train_pairs, val_pairs, test_pairs = data
    return (f"# Demo: {concept} on SmolLM2-135M-Instruct\n\nCommand: `split-steer demo{' --quick' if quick else ''} "
            f"--concept {concept} --methods {methods}`; {len(train_pairs)} train / {len(val_pairs)} validation / "
            f"{len(test_pairs)} test pairs; {seconds:.0f} s in all ({timing}).\n\nEach method's strength is "
            f"chosen on the validation pairs: the most accurate multiplier within +{BUDGET:.0%} held-out "
            "perplexity, over a log-spaced grid of relative edit strengths |m·delta| / median |h| (0.001 to 1) "
            "and the multipliers it was trained at. The test pairs are scored only there.\n\n" + table +
            "\n\n`protocol.png`: validation accuracy vs strength, and test accuracy per perplexity budget. "
            "`table.csv`: every budget (2/5/10%). `sweep/`: the validation sweeps with the paper's fits "
            "(`sweep/report.md` explains preference and utility log-odds). Generations: `generations.md`. "
            "Trained interventions: `interventions/<method>/`.\n")


def run_demo(out_dir: str | Path = "reports/demo", concept: str = "optimism", quick: bool = False,
             methods: str = DEFAULT_METHODS, layer: int | None = None, model_and_tokenizer=None) -> Path:
    """Train, evaluate under the protocol and report; returns the report folder.

    `layer` overrides the presets' layer 15; `model_and_tokenizer` replaces the embedded model
    (the tests pass a tiny one).
    """
    torch.manual_seed(0)
    start = time.perf_counter()
    names = parse_methods(methods)
    model, tokenizer = model_and_tokenizer or load_default_model()
    data = _split(concept, quick)
    text = load_heldout_text(words=HELDOUT_WORDS)
    stages = {"loading": time.perf_counter() - start}
    cache = SweepCache()  # the methods share each batch's unsteered pass and layers below L
    runs = [_run(model, tokenizer, name, data, quick, text, layer, cache) for name in names]
    stages["training"] = sum(run.evaluation.train_seconds for run in runs)
    stages["evaluation"] = time.perf_counter() - start - stages["loading"] - stages["training"]
    rows = _rows(runs)
    prompts = [p.question for p in data[2][:GENERATION_PROMPTS]]
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        written = time.perf_counter()
        evaluations = {run.name: run.evaluation for run in runs}
        write_report({name: ev.validation for name, ev in evaluations.items()}, tmp / "sweep",
                     title=f"{concept}: validation sweeps of {', '.join(names)}")
        plot_protocol(evaluations, tmp / "protocol.png")
        (tmp / "table.csv").write_text(_csv(rows), encoding="utf-8")
        table = _markdown_table(rows)
        (tmp / "generations.md").write_text(_generations(model, tokenizer, runs, prompts), encoding="utf-8")
        for run in runs:  # small: kept so `split-steer sweep` can re-analyse them
            run.intervention.save_pretrained(str(tmp / "interventions" / run.name),
                                             card_folder=str(out_dir / "interventions" / run.name))
            run.evaluation.to_json(tmp / "interventions" / run.name / "evaluation.json")
        stages["report and generations"] = time.perf_counter() - written
        timing = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in stages.items())
        (tmp / "README.md").write_text(_readme(concept, quick, methods, data, time.perf_counter() - start,
                                               timing, table), encoding="utf-8")
    print("\n" + table + f"\n\n[demo] report written to {out_dir} "
          f"({time.perf_counter() - start:.0f} s: {timing})", flush=True)
    return out_dir
