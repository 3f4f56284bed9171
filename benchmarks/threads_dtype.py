"""CPU threads and bf16 autocast for training: speed and how far the result moves, side by side.

    python benchmarks/threads_dtype.py [--pairs 16] [--epochs 1] [--layer 15] [--markdown BENCHMARKS.md]

Trains the split-vector preset on the same power-seeking pairs with 1 thread, with torch's
default thread count, and with the default count under bf16 autocast (fp32 master weights).
Prints pairs/s, the ratio to the default, the largest per-step loss difference from fp32 at
the default count, and the largest parameter difference of the trained vectors.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import date

import torch

from _markdown import as_code_block, captured, write_section
from split_plugin import TrainConfig, load_default_model, load_pairs, preset_path, train


def run(model, tokenizer, pairs, config: TrainConfig, threads: int) -> tuple[float, list[float], torch.Tensor]:
    """(seconds, per-step losses, trained parameters) of one training run at `threads`."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        history: list = []
        start = time.perf_counter()
        intervention = train(model, tokenizer, pairs, config, history=history)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(before)
    return seconds, [h["loss"] for h in history], torch.cat([p.flatten() for p in intervention.parameters()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--markdown", default=None, help="also write the output into this file's section")
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    with captured() as printed:
        print(f"$ python {' '.join(sys.argv)}")
        print(f"torch {torch.__version__}, default {default_threads} threads; date {date.today().isoformat()}, "
              f"{os.cpu_count()} cores, {platform.machine()}")
        model, tokenizer = load_default_model()
        pairs = load_pairs("power-seeking", split="train", limit=args.pairs)
        base = {**TrainConfig.from_yaml(preset_path("split-vector")).to_dict(), "layer": args.layer,
                "epochs": args.epochs, "progress": False}
        variants = {"1 thread, fp32": (1, None), f"{default_threads} threads, fp32 (default)": (default_threads, None),
                    f"{default_threads} threads, bf16 autocast": (default_threads, "bf16")}
        results = {name: run(model, tokenizer, pairs, TrainConfig.from_dict({**base, "autocast": dtype}), threads)
                   for name, (threads, dtype) in variants.items()}
        ref_seconds, ref_losses, ref_params = results[f"{default_threads} threads, fp32 (default)"]
        print(f"{args.pairs} pairs, {args.epochs} epoch(s), split-vector preset, layer {args.layer}")
        for name, (seconds, losses, params) in results.items():
            loss_diff = max(abs(a - b) for a, b in zip(losses, ref_losses))
            print(f"  {name:28s} {args.pairs * args.epochs / seconds:6.2f} pairs/s  {ref_seconds / seconds:5.2f}x  "
                  f"max |loss - fp32 loss| {loss_diff:.2e}  max |param - fp32 param| "
                  f"{float((params - ref_params).abs().max()):.2e}")
    if args.markdown:
        write_section(args.markdown, "threads-dtype", "CPU threads and bf16 (benchmarks/threads_dtype.py)",
                      as_code_block(printed.getvalue()))


if __name__ == "__main__":
    main()
