"""Recipe search on validation pairs: which training settings make each method strongest within +5%?

    python benchmarks/tune.py [--methods split-lora split-vector sft-vector ...] [--concepts ...]
        [--seeds 0] [--candidates NAME ...] [--budget-minutes 60] [--out benchmarks/results/tune]
        [--markdown BENCHMARKS.md] [--section tune]

Each candidate is a preset plus overrides (the list below; the reference's own settings are one
of them). It is trained on the training pairs minus the last 40 (the first --train-pairs of
them) and evaluated under the comparison protocol (split_plugin.analysis.protocol) on those
40 held-back pairs: the relative-strength grid plus its trained multipliers, the strength chosen
by `best_within`. Score: validation accuracy within +5% held-out perplexity, averaged over
concepts and seeds; the chosen candidate is the best score among those that gain on every cell
(a cell where no strength beats unsteered within the budget counts against it). The test split is never read.

Every (candidate, concept, seed) cell is saved under --out and skipped when present, so an
interrupted search resumes; --budget-minutes stops starting new cells after that much time
(0: report the cells already computed, train nothing).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import command, publish  # noqa: E402
from _results import results_dir  # noqa: E402

from split_plugin import TrainConfig, load_default_model, load_heldout_text, load_pairs, preset_path, train  # noqa: E402
from split_plugin.analysis.protocol import Evaluation, best_within, evaluate  # noqa: E402
from split_plugin.data import HELDOUT_WORDS  # noqa: E402

VAL_PAIRS = 40
BUDGET = 0.05
#: the reference's own settings (EasyEdit spilt_experiment gemma-2-9b-it yamls), per form
REFERENCE = {
    "vector": {"margin_weight": 8.0, "margin": 0.3, "sub_rows": True, "dropout": 0.1, "epochs": 2},
    "lora": {"margin_weight": 5.0, "margin": 0.4, "sub_rows": True, "grad_accum": 2, "dropout": 0.1,
             "epochs": 2, "rank": 4, "alpha": 32.0},
    "local_weight": {"margin_weight": 5.0, "margin": 0.4, "sub_rows": False, "grad_accum": 2,
                     "dropout": 0.1, "epochs": 2},
}
A32 = {"alpha": 32.0, "epochs": 2}  # the lora candidates below train 2 epochs unless they say otherwise
#: method (= preset name) -> candidates (name, overrides), in search order: the budget cuts the tail
SEARCH = {
    "split-lora": [
        ("alpha 4 (the preset before this search)", {"alpha": 4.0, "epochs": 2}), ("reference", REFERENCE["lora"]),
        ("alpha 32", A32),
        ("alpha 32, no sub rows, margin 2", {**A32, "sub_rows": False, "margin": 2.0}),
        ("alpha 32, margin 2", {**A32, "margin": 2.0}),
        ("alpha 32, lr 0.02", {**A32, "lr": 0.02}),
        ("alpha 32, 4 epochs", {**A32, "epochs": 4}),
        ("alpha 32, sum NLL", {**A32, "loss_reduction": "sum"}),
        ("alpha 32, factors 0.5..2", {**A32, "factors": [0.5, 1.0, 1.5, 2.0]}),
        ("rank 8, alpha 64", {"rank": 8, "alpha": 64.0, "epochs": 2}),
        ("alpha 32, dropout 0.1", {**A32, "dropout": 0.1}),
        ("alpha 32, margin weight 8, margin 0.3", {**A32, "margin_weight": 8.0, "margin": 0.3}),
        ("alpha 32, manifold 1.0", {**A32, "manifold_weight": 1.0}),
        ("alpha 32, 4 epochs, KL 1", {**A32, "epochs": 4, "kl_weight": 1.0}),
        ("alpha 32, 4 epochs, KL 3", {**A32, "epochs": 4, "kl_weight": 3.0}),
    ],
    "split-vector": [
        ("preset", {}),
        ("m = 1 only, KL 1", {"factors": [1.0], "kl_weight": 1.0}),
        ("factors 0.5..2, KL 1", {"factors": [0.5, 1.0, 2.0], "kl_weight": 1.0}),
        ("m = 1 only, manifold 1", {"factors": [1.0], "manifold_weight": 1.0}),
        ("factors 0.5..2, KL 3", {"factors": [0.5, 1.0, 2.0], "kl_weight": 3.0}),
        ("m = 1 only", {"factors": [1.0]}),
        ("reference", REFERENCE["vector"]),
        ("lr 0.02", {"lr": 0.02}), ("no sub rows", {"sub_rows": False}),
        ("margin 2", {"margin": 2.0}), ("4 epochs", {"epochs": 4}),
        ("sum NLL", {"loss_reduction": "sum"}),
        ("factors 0.5..5", {"factors": [0.5, 1.0, 2.0, 3.0, 4.0, 5.0]}),
        ("neg weight 0", {"neg_weight": 0.0}),
        ("manifold 1.0", {"manifold_weight": 1.0}),
    ],
    "split-local_weight": [("preset", {}), ("reference", REFERENCE["local_weight"]), ("lr x0.25", {"lr": None})],
    "caa-vector": [("CAA (no training: the baseline the vector must beat)", {})],
    "sft-vector": [("preset", {}), ("lr 0.02", {"lr": 0.02}), ("no sub rows", {"sub_rows": False}),
                   ("4 epochs", {"epochs": 4})],
    "sft-lora": [("preset", {}), ("alpha 32", A32), ("no sub rows, m = 1 only", {"sub_rows": False, "factors": [1.0]}),
                 ("alpha 32, no sub rows, m = 1 only", {**A32, "sub_rows": False, "factors": [1.0]})],
    "reps-vector": [("preset", {}), ("lr 0.02", {"lr": 0.02}), ("no sub rows", {"sub_rows": False})],
    "reps-lora": [("preset", {}), ("alpha 32", A32)],
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["split-lora", "split-vector"], choices=list(SEARCH))
    p.add_argument("--concepts", nargs="+", default=["power-seeking", "optimism"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--candidates", nargs="+", default=None,
                   help="run only the candidates with these names (default: all, in search order)")
    p.add_argument("--train-pairs", type=int, default=96)
    p.add_argument("--budget-minutes", type=float, default=60.0, help="start no new cell after this long")
    p.add_argument("--out", default=results_dir("tune"))
    p.add_argument("--markdown", default=None, help="write the search table into this file's --section")
    p.add_argument("--section", default="tune", help="the marked section of --markdown to rewrite")
    return p.parse_args(argv)


def searched(method: str, names: list[str] | None) -> list[tuple[str, dict]]:
    """The method's candidates in search order, or only those named in `names`."""
    return [c for c in SEARCH[method] if names is None or c[0] in names]


def check_candidates(methods: list[str], names: list[str] | None) -> None:
    """Every name given to --candidates must be a candidate of one of the methods searched."""
    known = [name for m in methods for name, _ in SEARCH[m]]
    unknown = [n for n in names or [] if n not in known]
    if unknown:
        raise SystemExit(f"--candidates {unknown!r}: not a candidate of {methods}; choose from {known}")


def candidate_config(method: str, overrides: dict, seed: int) -> TrainConfig:
    values = {**TrainConfig.from_yaml(preset_path(method)).to_dict(), "seed": seed, "progress": False}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if overrides.get("lr", 0) is None:  # "lr x0.25"
        values["lr"] = values["lr"] / 4
    return TrainConfig.from_dict(values)


def cell_path(out: Path, config: TrainConfig, concept: str, n_train: int) -> Path:
    """One file per (settings, concept, training size): `config.digest()` covers every training setting."""
    return out / f"{concept}-n{n_train}-{config.digest()}.json"


def run_cell(model, tokenizer, config: TrainConfig, concept: str, n_train: int, text: str) -> Evaluation:
    pairs = load_pairs(concept, split="train")
    train_pairs, val_pairs = pairs[:-VAL_PAIRS][:n_train], pairs[-VAL_PAIRS:]
    start = time.perf_counter()
    intervention = train(model, tokenizer, train_pairs, config)
    seconds = time.perf_counter() - start
    return evaluate(model, tokenizer, intervention, val_pairs, {}, text, name=concept, train_seconds=seconds)


def summarize(evals: list[Evaluation]) -> dict:
    """Mean validation accuracy and perplexity change at the +5% choice, and the trained-point check.

    A cell where no strength beats unsteered within the budget (`best_within` keeps m = 0) is a
    seed the recipe failed on: `no_gain` counts them.
    """
    chosen = [best_within(e.validation, BUDGET) for e in evals]
    top = [max(e.trained_rows(), key=lambda r: r["multiplier"]) for e in evals]
    per_concept: dict[str, list[float]] = {}
    for e, c in zip(evals, chosen):
        per_concept.setdefault(e.name, []).append(c["accuracy"])
    return {"val_acc": float(np.mean([c["accuracy"] for c in chosen])),
            "ppl": float(np.mean([c["ppl_increase"] for c in chosen])),
            "strength": float(np.mean([e.point(c["multiplier"]).strength for e, c in zip(evals, chosen)])),
            "acc_m1": float(np.mean([next(r for r in e.trained_rows() if r["multiplier"] == 1.0)["val_accuracy"]
                                     for e in evals])),
            "ppl_top": float(np.mean([t["ppl_increase"] for t in top])),
            "per_concept": {name: float(np.mean(accs)) for name, accs in per_concept.items()},
            "worst": float(min(c["accuracy"] for c in chosen)),
            "no_gain": sum(c["multiplier"] == 0 for c in chosen),
            "seconds": float(np.mean([e.train_seconds for e in evals]))}


def pick(rows: list[tuple[str, dict]]) -> str | None:
    """The best mean validation accuracy among candidates that gain on every cell (`no_gain` 0): a
    recipe that fails on one seed in six is no default. If every candidate fails somewhere: the best mean."""
    reliable = [r for r in rows if r[1]["no_gain"] == 0] or rows
    return max(reliable, key=lambda r: r[1]["val_acc"])[0] if reliable else None


def table(method: str, rows: list[tuple[str, dict]]) -> list[str]:
    lines = [f"#### {method}", "", "| candidate | val acc @ +5% | worst cell | cells without gain | ppl there | strength "
             "| val acc @ m=1 | ppl @ top trained m | per concept (mean over seeds) | train s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    best = pick(rows)
    for name, s in rows:
        per = ", ".join(f"{k} {v:.3f}" for k, v in s["per_concept"].items())
        mark = " **(chosen)**" if name == best else ""
        lines.append(f"| {name}{mark} | {s['val_acc']:.3f} | {s['worst']:.3f} | {s['no_gain']} | {s['ppl']:+.1%} | "
                     f"{s['strength']:.3g} | {s['acc_m1']:.3f} | {s['ppl_top']:+.1%} | {per} | {s['seconds']:.0f} |")
    return lines + [""]


def main(argv=None) -> None:
    args = parse_args(argv)
    check_candidates(args.methods, args.candidates)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_default_model()
    text = load_heldout_text(words=HELDOUT_WORDS)
    cells = [(m, name, ov, c, s) for m in args.methods for name, ov in searched(m, args.candidates)
             for c in args.concepts for s in args.seeds]
    started, results = time.monotonic(), {}
    for method, name, overrides, concept, seed in tqdm(cells, desc="tune", unit="cell"):
        config = candidate_config(method, overrides, seed)
        path = cell_path(out, config, concept, args.train_pairs)
        if path.exists():
            evaluation = Evaluation.from_json(path)
        elif time.monotonic() - started > 60 * args.budget_minutes:
            continue
        else:
            evaluation = run_cell(model, tokenizer, config, concept, args.train_pairs, text)
            evaluation.to_json(path)
        results.setdefault((method, name), []).append(evaluation)
    lines = [f"Command: `{command('tune.py', argv)}`  ",
             f"Date: {date.today()}; machine: {platform.machine()}; {args.train_pairs} training pairs "
             f"(training split minus its last {VAL_PAIRS}), scored on those {VAL_PAIRS} validation pairs; "
             f"concepts {args.concepts}; seeds {args.seeds}. Strength chosen on validation within "
             f"+{BUDGET:.0%} held-out perplexity (first {HELDOUT_WORDS} words of the bundled prose). A "
             "candidate is listed once all its cells ran.", ""]
    want = len(args.concepts) * len(args.seeds)
    for method in args.methods:
        rows = [(name, summarize(results[(method, name)])) for name, _ in searched(method, args.candidates)
                if len(results.get((method, name), [])) == want]
        lines += table(method, rows)
    publish("\n".join(lines), args.markdown, args.section, "Recipe search (benchmarks/tune.py)")


if __name__ == "__main__":
    main()
