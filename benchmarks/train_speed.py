"""Training throughput of our trainer against the reference's procedure, measured side by side.

Runs the same SPLIT training steps on the embedded model three ways and prints pairs/s and
ratios:
  ours       prefix cache + LM head on answer tokens only + positive and negative rows in one forward
  no-cache   full forward every step, full LM head (the plain computation), one joint forward
  reference  full forward, full LM head, separate forwards for positive and negative rows

    python benchmarks/train_speed.py [--pairs 32] [--epochs 2] [--layer 15] [--form vector] [--threads N]
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
from split_plugin import load_default_model, load_pairs, train

VARIANTS = {
    "ours": {},
    "no-cache": dict(prefix_cache=False, answer_only_head=False),
    "reference": dict(prefix_cache=False, answer_only_head=False, joint_forward=False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--form", default="vector")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--markdown", default=None, help="also write the output into this file's section")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with captured() as printed:
        measure(args)
    if args.markdown:
        write_section(args.markdown, "train-speed", "Training speed (benchmarks/train_speed.py)",
                      as_code_block(printed.getvalue()))


def measure(args: argparse.Namespace) -> None:
    model, tokenizer = load_default_model()
    pairs = load_pairs("power-seeking", split="train", limit=args.pairs)
    base = dict(layer=args.layer, method="split", form=args.form, epochs=args.epochs, batch_size=4,
                lr=0.08 if args.form == "vector" else 0.01, progress=False,
                factors=[2.0, 4.0, 8.0] if args.form == "vector" else [0.5, 1.0, 2.0])
    print(f"$ python {' '.join(sys.argv)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"date {date.today().isoformat()}, {os.cpu_count()} cores, {platform.machine()}")
    rates, finals = {}, {}
    for name, overrides in VARIANTS.items():
        start = time.perf_counter()
        intervention = train(model, tokenizer, pairs, {**base, **overrides})
        seconds = time.perf_counter() - start
        rates[name] = args.pairs * args.epochs / seconds
        finals[name] = torch.cat([p.flatten() for p in intervention.parameters()])
        print(f"{name:10s} {seconds:7.1f} s  {rates[name]:6.2f} pairs/s")
    drift = max(float((finals[n] - finals["ours"]).abs().max()) for n in finals)
    print(f"max parameter difference between variants: {drift:.2e} (same training, different speed)")
    for name in ("no-cache", "reference"):
        print(f"ours / {name}: {rates['ours'] / rates[name]:.2f}x")


if __name__ == "__main__":
    main()
