"""Quality grid on the embedded model: does SPLIT buy preference without losing utility?

    python benchmarks/quality.py [--concepts power-seeking self-preservation optimism]
        [--methods CAA SFT SPLIT SPLIT+KL SPLIT-lora SPLIT-local_weight LoRA]
        [--seeds 0 1 2] [--train-pairs N] [--test-pairs N] [--cached-only]
        [--out benchmarks/results/quality] [--figure docs/quality_frontier.png] [--markdown BENCHMARKS.md]
        [--section quality]

Each cell (concept x method x seed) trains one intervention from the embedded-model presets on
the training split minus its last 40 pairs (the first --train-pairs of them) and evaluates it
under the comparison protocol (split_plugin.analysis.protocol): validation on those 40 held-back
pairs at the relative-strength grid (|m * delta| / median residual norm, 0.001 to 1) plus the
multipliers it was trained at (m = 1 alone for CAA and for plain peft LoRA), the operating
strength per perplexity budget chosen there by `best_within`, and the test split (its first
--test-pairs) scored at those chosen strengths only. A cell is the Evaluation's JSON under --out
(concept, method, seed and training config in its `extra`), skipped when present, so an
interrupted run resumes; `--cached-only` reports what is there and trains nothing.

Per concept the script prints, and with --markdown writes into the "quality" section of that file:
test accuracy within +2% / +5% / +10% held-out perplexity, the relative strength chosen on
validation for +5% and its perplexity change, validation accuracy at m = 1, the perplexity change
at the largest trained multiplier, parameters and training seconds; means over seeds with 95%
t-intervals (CAA has no randomness: it runs once and counts for every seed, so its interval is
zero). --figure: test accuracy against the perplexity budget, one line per method, mean over seeds.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cells import (METHODS, SPLIT_VARIANTS, add_grid_arguments, at_m1, best_on_validation, cell_path,  # noqa: E402
                    collect, protocol_line, run_cell, runs, top_trained, unsteered)
from _frontier import frontier_curves, plot_frontier  # noqa: E402
from _intervals import fmt, stat  # noqa: E402
from _markdown import write_section  # noqa: E402
from _results import results_dir  # noqa: E402

from split_plugin import load_default_model, load_heldout_text  # noqa: E402
from split_plugin.analysis.protocol import BUDGETS, Evaluation  # noqa: E402
from split_plugin.data import HELDOUT_WORDS  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_grid_arguments(p, list(METHODS))
    p.add_argument("--epochs", type=int, default=None, help="override the presets' epochs")
    p.add_argument("--kl-weight", type=float, default=None, help="override SPLIT+KL's kl_weight")
    p.add_argument("--out", default=results_dir("quality"))
    p.add_argument("--figure", default="docs/quality_frontier.png", help="frontier figure ('' = none)")
    p.add_argument("--markdown", default=None, help="write the tables into this file's --section")
    p.add_argument("--section", default="quality",
                   help="the Markdown section to write (a subset of methods gets its own, e.g. quality-tuned)")
    p.add_argument("--cached-only", action="store_true",
                   help="report the cells already computed under --out; train nothing")
    return p.parse_args(argv)


def tables(cells: list[Evaluation], concepts: list[str], methods: list[str]) -> str:
    lines = []
    for concept in concepts:
        mine = [c for c in cells if c.extra["concept"] == concept]
        if not mine:
            continue
        x = mine[0].extra
        lines += [f"#### {concept} ({x['test_pairs']} test pairs, {x['validation_pairs']} validation pairs, "
                  f"{x['train_pairs']} training pairs; unsteered test accuracy {unsteered(mine):.3f})", "",
                  "| method | seeds | params | test acc @ ppl +2% | @ +5% | @ +10% | strength @ +5% | ppl there "
                  "| val acc @ m=1 | ppl @ top trained m | train s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for method in methods:
            evals = runs(cells, concept, method)
            if not evals:
                continue
            accs = [fmt(*stat(evals, lambda e, b=b: e.at_budget(b)["accuracy"])) for b in BUDGETS]
            lines.append(f"| {method} | {len(evals)} | {evals[0].params} | {' | '.join(accs)} | "
                         f"{fmt(*stat(evals, lambda e: e.at_budget(0.05)['strength']), sig=True)} | "
                         f"{fmt(*stat(evals, lambda e: e.at_budget(0.05)['ppl_increase']), pct=True)} | "
                         f"{fmt(*stat(evals, lambda e: at_m1(e)['val_accuracy']))} | "
                         f"{fmt(*stat(evals, lambda e: top_trained(e)['ppl_increase']), pct=True)} | "
                         f"{np.mean([e.train_seconds for e in evals]):.0f} |")
        lines.append("")
    return "\n".join(lines)


def reading(cells: list[Evaluation], concepts: list[str], methods: list[str]) -> str:
    """The three questions answered from the numbers above (computed, never typed)."""
    lines = ["**(a) Test accuracy within +5% held-out perplexity, strength chosen on validation** "
             "(mean ± 95% CI):", ""]
    for concept in concepts:
        acc = {m: stat(runs(cells, concept, m), lambda e: e.at_budget(0.05)["accuracy"]) for m in methods}
        acc = {m: v for m, v in acc.items() if math.isfinite(v[0])}
        best = best_on_validation(cells, concept, [m for m in SPLIT_VARIANTS if m in acc])
        if acc:
            lines.append(f"- {concept}: " + ", ".join(f"{m} {fmt(*v)}" for m, v in acc.items()) + "."
                         + _split_verdict(acc, best))
    lines += ["", "**(b) Held-out perplexity change at the largest multiplier each method was trained at**:", ""]
    for concept in concepts:
        ppl = {m: stat(runs(cells, concept, m), lambda e: top_trained(e)["ppl_increase"]) for m in methods}
        ppl = {m: v for m, v in ppl.items() if math.isfinite(v[0])}
        if ppl:
            lines.append(f"- {concept}: " + ", ".join(f"{m} {fmt(*v, pct=True)}" for m, v in ppl.items()) + ".")
    if "LoRA" in methods and "SPLIT" in methods:
        header_at = len(lines)
        for concept in concepts:
            rows = [f"{m} {evals[0].params} parameters, accuracy "
                    f"{fmt(*stat(evals, lambda e: e.at_budget(0.05)['accuracy']))}"
                    for m in ("SPLIT", "SPLIT+KL", "SPLIT-tuned", "LoRA", "SPLIT-lora") if (evals := runs(cells, concept, m))]
            if len(rows) > 1 and any(r.startswith("LoRA ") for r in rows):
                lines.append(f"- {concept}: " + "; ".join(rows) + ".")
        if len(lines) > header_at:
            lines[header_at:header_at] = ["", "**(c) Trainable parameters against test accuracy within +5%**:", ""]
    return "\n".join(lines) + "\n"


def _split_verdict(acc: dict, best: str | None) -> str:
    """The SPLIT variant best on validation against CAA and SFT on test: above in the mean, do the intervals separate?"""
    if best is None:
        return ""
    above = [m for m in ("CAA", "SFT") if m in acc and acc[best][0] > acc[m][0]]
    clear = [m for m in above if acc[best][0] - acc[best][1] > acc[m][0] + acc[m][1]]
    if not math.isfinite(acc[best][1]):
        spread = ", from one seed (no interval)" if above else ""
    else:
        spread = (f", with non-overlapping intervals against {', '.join(clear)}" if clear
                  else ", but the intervals overlap" if above else "")
    return f" Best SPLIT variant (on validation): {best}; above {', '.join(above) or 'neither CAA nor SFT'} in the mean{spread}."


def header(args, cells: list[Evaluation]) -> str:
    seeds = sorted({c.extra["seed"] for c in cells})
    command = " ".join(["python benchmarks/quality.py", *map(shlex.quote, sys.argv[1:])])
    note = ("  \nCells: computed by the same command without `--cached-only` (it resumes per cell); "
            "the seeds column says how many finished, and a rerun fills in the rest.") if args.cached_only else ""
    return (f"Command: `{command}`{note}  \n"
            f"Date: {date.today().isoformat()}; machine: {os.cpu_count()} cores, {platform.machine()}; "
            f"torch {torch.__version__}; seeds {seeds}.  \n{protocol_line()}\n")


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = (None, None) if args.cached_only else load_default_model()
    text = load_heldout_text(words=HELDOUT_WORDS)
    # seed-major: an interrupted run still covers every concept and method with the seeds it got to
    grid = [(c, m, s) for s in args.seeds for c in args.concepts for m in args.methods]
    cells = collect(grid, cell_path(args, out),
                    lambda c, m, s: run_cell(model, tokenizer, c, m, s, args, text),
                    deterministic=("CAA",), cached_only=args.cached_only, desc="quality grid")
    figure = ""
    if args.figure and cells:
        plot_frontier(frontier_curves(cells, args.concepts, args.methods), [(Path(args.figure), 80)])
        figure = f"![test accuracy against the perplexity budget]({args.figure})\n\n"
    report = (header(args, cells) + "\n" + figure + tables(cells, args.concepts, args.methods) + "\n"
              + reading(cells, args.concepts, args.methods))
    print("\n" + report)
    if args.markdown:
        title = "Quality grid (benchmarks/quality.py)" + ("" if args.section == "quality" else f": {args.section}")
        write_section(args.markdown, args.section, title, report)
        print(f"written to {args.markdown}")


if __name__ == "__main__":
    main()
