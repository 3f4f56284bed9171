"""Time a multiplier sweep on the embedded model: naive (full forward per m) vs cached prefix.

    python benchmarks/sweep_speed.py [--pairs 32] [--layer 15] [--points 21] [--heldout]

A vector intervention (the unit CAA direction from training pairs, scaled so that |m| = 10
is half the median residual norm at the layer) is swept over `--points` multipliers from -10
to 10 on test pairs of a bundled dataset, once with `sweep(..., naive=True)` (a full forward
with full logits per multiplier) and once with the default path (prefix below the layer run
once per batch, several multipliers stacked in one pass, LM head at answer positions only).
Both must agree; the script prints both times and the ratio naive / ours, then the fits.
Ours is also timed with its batches cut in input order instead of by length (runs alternate,
two each, medians), with the padding share of both batchings.
"""
from __future__ import annotations

import argparse
import platform
import os
import shlex
import sys
import time
from datetime import date
from unittest import mock

import numpy as np
import torch

from _markdown import as_code_block, captured, write_section
from split_plugin import Intervention
from split_plugin.analysis import concept_direction, sweep
from split_plugin.analysis import sweeping
from split_plugin.analysis.sweeping import raw_logprobs
from split_plugin.forward import layer_outputs
from split_plugin.data import encode_pairs, load_pairs
from split_plugin.layers import resolve_layout
from split_plugin.packing import packed_lengths
from split_plugin.models import load_default_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="power-seeking")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--points", type=int, default=21)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-rows", type=int, default=64)
    parser.add_argument("--heldout", action="store_true", help="also time held-out perplexity")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--markdown", default=None, help="also write the output into this file's section")
    return parser.parse_args()


def median_norm(model, tokenizer, pairs, layer: int) -> float:
    """Median norm of the residual stream leaving `layer` over the pairs' tokens."""
    batch = encode_pairs(tokenizer, pairs)
    states = layer_outputs(resolve_layout(model), batch.input_ids, batch.attention_mask, [layer])[layer]
    return float(states[batch.attention_mask.bool()].norm(dim=-1).median())


def caa_intervention(model, tokenizer, args) -> Intervention:
    """Unit CAA direction from training pairs, scaled so |m| = 10 is 0.5 x the median norm."""
    train = load_pairs(args.data, split="train", limit=64)
    direction = concept_direction(model, tokenizer, train, args.layer)
    scale = 0.05 * median_norm(model, tokenizer, train[:16], args.layer)
    intervention = Intervention.for_model(model, "vector", args.layer, concept=args.data)
    with torch.no_grad():
        intervention.vector.copy_(direction * scale)
    return intervention


def timed(label: str, **kwargs):
    start = time.perf_counter()
    result = sweep(**kwargs)
    seconds = time.perf_counter() - start
    print(f"{label:>17}: {seconds:8.2f} s")
    return result, seconds


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with captured() as printed:
        measure(args)
    if args.markdown:
        write_section(args.markdown, "sweep-speed", "Sweep speed (benchmarks/sweep_speed.py)",
                      as_code_block(printed.getvalue()))


def measure(args: argparse.Namespace) -> None:
    print("command: python", " ".join(shlex.quote(a) for a in sys.argv))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"date {date.today().isoformat()}, {os.cpu_count()} cores, {platform.machine()}")
    model, tokenizer = load_default_model()
    layout = resolve_layout(model)
    pairs = load_pairs(args.data, split="test", limit=args.pairs)
    intervention = caa_intervention(model, tokenizer, args)
    multipliers = np.linspace(-10, 10, args.points).round(6).tolist()
    print(f"model {layout.model_type} ({layout.num_layers} layers), layer {args.layer}, {len(pairs)} pairs of "
          f"{args.data!r}, {len(multipliers)} multipliers, batch {args.batch_size} pairs, "
          f"max {args.max_rows} stacked rows, heldout {'on' if args.heldout else 'off'}")
    common = dict(model=model, tokenizer=tokenizer, intervention=intervention, multipliers=multipliers,
                  batch_size=args.batch_size, heldout_text=True if args.heldout else None,
                  bootstrap=1000, progress=False)
    sweep(**{**common, "pairs": pairs[:2], "multipliers": [-1, 1]})  # warm-up both paths
    sweep(**{**common, "pairs": pairs[:2], "multipliers": [-1, 1], "naive": True})
    ours, t_ours = timed("ours", pairs=pairs, max_rows=args.max_rows, **common)
    naive, t_naive = timed("naive", pairs=pairs, naive=True, **common)
    diff = float(np.abs(raw_logprobs(ours) - raw_logprobs(naive)).max())
    print(f"max |log p(ours) - log p(naive)| = {diff:.2e} (sequence sums, fp32)")
    if args.heldout:
        ppl_diff = float(np.nanmax(np.abs(ours.column("perplexity") / naive.column("perplexity") - 1)))
        print(f"max relative perplexity difference = {ppl_diff:.2e}")
    assert diff < 1e-3, "the cached-prefix sweep disagrees with the naive one"
    print(f"speed-up naive / ours = {t_naive / t_ours:.2f}x")
    compare_orders(common, pairs, args, t_ours)
    report_fit(ours)


def padding_share(lengths: list[int], order: list[int], batch_size: int) -> float:
    """Padding slots / all slots of packed batches of `batch_size` pairs cut in `order`."""
    lengths = [lengths[i] for i in order]
    batches = [lengths[i:i + batch_size] for i in range(0, len(lengths), batch_size)]
    return 1 - sum(lengths) / sum(max(b) * len(b) for b in batches)


def compare_orders(common: dict, pairs, args, first: float) -> None:
    """Batches by length (ours) vs in input order, alternating runs; medians and padding shares."""
    def input_order(tokenizer, pairs, *rest):
        return list(range(len(pairs)))

    def run(label: str) -> float:
        return timed(label, pairs=pairs, max_rows=args.max_rows, **common)[1]

    def run_in_order() -> float:
        with mock.patch.object(sweeping, "_by_length", input_order):
            return run("ours, input order")

    in_order = [run_in_order()]
    by_length = [first, run("ours")]
    in_order.append(run_in_order())
    tokenizer = common["tokenizer"]
    lengths = packed_lengths(encode_pairs(tokenizer, pairs))
    sorted_order = sweeping._by_length(tokenizer, pairs, 256, None)
    print(f"padding slots: {padding_share(lengths, list(range(len(pairs))), args.batch_size):.1%} "
          f"in input order, {padding_share(lengths, sorted_order, args.batch_size):.1%} by length")
    print(f"batches by length / input order: {np.median(in_order) / np.median(by_length):.2f}x "
          f"(medians of {len(by_length)} and {len(in_order)} runs)")


def report_fit(result) -> None:
    """Accuracy range and the fitted curves' R^2 and phases."""
    acc = result.column("accuracy")
    print(f"accuracy: m=-10 {acc[0]:.2f}, m=0 {acc[len(acc) // 2]:.2f}, m=+10 {acc[-1]:.2f}")
    fit = result.fit()
    for curve in (fit.preference, fit.utility):
        branches = ", ".join(f"{b} {v:.3f}" for b, v in curve.r2_branch.items())
        print(f"{curve.kind} fit R^2 = {curve.r2:.3f} ({branches}) flags: {curve.flags or 'none'}")
    for side, phases in fit.phases.items():
        print(f"phases {side}: " + ", ".join(f"{k} {phases.get(k)}" for k in ("linear", "transition", "convergence")))


if __name__ == "__main__":
    main()
