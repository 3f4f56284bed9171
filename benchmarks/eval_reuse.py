"""The demo's evaluation of several methods, each alone vs all sharing one SweepCache.

    python benchmarks/eval_reuse.py --interventions reports/demo/interventions [--methods CAA,SFT] [--flops]

Loads interventions a demo run saved and evaluates each under the protocol on the demo's
validation pairs, test pairs and held-out text: first each alone (`cache=None`, as before the
cache existed), then all sharing one `SweepCache`. Prints the seconds (with `--flops` also the
matmul and attention FLOPs torch's FlopCounterMode counts) per method for both ways, and the
largest differences between them: relative held-out perplexity, absolute preference log-odds
on validation and test, and whether every chosen strength is the same.
"""
from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from split_plugin import Intervention
from split_plugin.analysis import SweepCache, evaluate
from split_plugin.analysis.protocol import FRONTIER_BUDGETS
from split_plugin.data import HELDOUT_WORDS, load_heldout_text, load_pairs
from split_plugin.demo import TEST_PAIRS, VAL_PAIRS
from split_plugin.models import load_default_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interventions", required=True, help="a demo report's interventions/ folder")
    parser.add_argument("--methods", default="CAA,SFT,SPLIT-tuned,SPLIT-lora", help="sub-folders, in order")
    parser.add_argument("--concept", default="optimism", help="the concept the demo ran on")
    parser.add_argument("--flops", action="store_true", help="also count FLOPs (slower)")
    return parser.parse_args()


def run(model, tok, edits: dict, data, cache: SweepCache | None, flops: bool) -> dict:
    """{method: (Evaluation, seconds, FLOPs or None)}, evaluated in order."""
    val, test, text = data
    out = {}
    for name, edit in edits.items():
        counter = FlopCounterMode(display=False) if flops else None
        start = time.perf_counter()
        with counter or contextlib.nullcontext():
            ev = evaluate(model, tok, edit, val, {"test": test}, text, name=name, cache=cache)
        out[name] = (ev, time.perf_counter() - start, counter.get_total_flops() if counter else None)
    return out


def differences(a, b) -> tuple[float, float, bool]:
    """(max relative perplexity difference, max |pref log-odds| difference, same choices)."""
    ppl = np.abs(b.validation.column("perplexity") / a.validation.column("perplexity") - 1).max()
    pref = max(np.abs(b.validation.column("pref_mean") - a.validation.column("pref_mean")).max(),
               np.abs(b.tests["test"].column("pref_mean") - a.tests["test"].column("pref_mean")).max())
    same = all(a.choose(x) == b.choose(x) for x in FRONTIER_BUDGETS)
    return float(ppl), float(pref), same


def main() -> None:
    args = parse_args()
    model, tok = load_default_model()
    pairs = load_pairs(args.concept, split="train")
    data = (pairs[-VAL_PAIRS:], load_pairs(args.concept, split="test", limit=TEST_PAIRS),
            load_heldout_text(words=HELDOUT_WORDS))
    edits = {m: Intervention.from_pretrained(str(Path(args.interventions) / m)) for m in args.methods.split(",")}
    print(f"torch threads {torch.get_num_threads()}; {len(data[0])} validation / {len(data[1])} test pairs, "
          f"{HELDOUT_WORDS} held-out words; methods in this order: {', '.join(edits)}", flush=True)
    alone = run(model, tok, edits, data, None, args.flops)
    shared = run(model, tok, edits, data, SweepCache(), args.flops)
    print("| method | alone [s] | shared [s] | alone [TFLOP] | shared [TFLOP] | ppl rel diff | pref diff "
          "| same choices |")
    print("|---|---|---|---|---|---|---|---|")
    for name in edits:
        (a, sa, fa), (b, sb, fb) = alone[name], shared[name]
        ppl, pref, same = differences(a, b)
        tf = (f"{fa / 1e12:.2f} | {fb / 1e12:.2f}" if args.flops else "- | -")
        print(f"| {name} | {sa:.1f} | {sb:.1f} | {tf} | {ppl:.1e} | {pref:.1e} | {same} |")
    total_a, total_b = sum(v[1] for v in alone.values()), sum(v[1] for v in shared.values())
    print(f"in all: alone {total_a:.1f} s, shared {total_b:.1f} s ({total_b / total_a:.2f}x the time)")


if __name__ == "__main__":
    main()
