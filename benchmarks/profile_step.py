"""Where a SPLIT training run's time goes, by torch.profiler: attention, MLP, LM head, optimizer, the rest.

    python benchmarks/profile_step.py [--pairs 16] [--epochs 1] [--layer 15] [--form vector]
                                      [--concepts power-seeking optimism] [--markdown BENCHMARKS.md]

Every profiled op's self CPU time goes to one bucket, by its name and the shapes it ran on
(the model's hidden, key/value, intermediate and vocabulary sizes tell a projection apart):
- LM head: matrix products that touch the vocabulary dimension;
- MLP: matrix products that touch the intermediate dimension, and the activation;
- attention: q/k/v/o projections, scaled-dot-product attention, rotary embeddings;
- optimizer: ops inside AdamW's step;
- norms and element-wise: RMS norms, residual adds and the remaining arithmetic;
- data movement: copies, concatenation, indexing, padding;
- Python and dispatch: the run's wall time minus all profiled op time (hooks, loops, the
  trainer's own Python, the profiler's overhead).
The whole `train()` call is profiled, the one-off prefix pass below the layer included.

Then padding: the share of token slots in the trainer's packed batches that hold padding, per
bundled concept, as the trainer batches them (shuffled) and as bucketing by length would (pairs
sorted by packed length, then cut into batches). Padding is the most bucketing could save.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections import defaultdict
from datetime import date

import torch
from torch.profiler import ProfilerActivity, profile

from _markdown import as_code_block, captured, write_section
from split_plugin import TrainConfig, load_default_model, load_pairs, train
from split_plugin.layers import resolve_layout
from split_plugin.trainer import _Trainer

CONCEPTS = ("power-seeking", "self-preservation", "optimism")

MOVES = ("copy", "cat", "index", "gather", "scatter", "pad", "slice", "select", "stack", "clone",
         "contiguous", "to", "view", "reshape", "expand", "transpose", "permute", "empty", "zero", "fill")
ATTENTION = ("attention", "softmax", "bmm", "rotary", "baddbmm")


def bucket(name: str, shapes: list, dims: dict[str, int]) -> str:
    """The part of the step an op belongs to, from its name and input shapes."""
    flat = {d for shape in shapes if isinstance(shape, (list, tuple)) for d in shape if isinstance(d, int)}
    is_matmul = any(k in name for k in ("mm", "linear", "matmul", "addmm"))
    if is_matmul and dims["vocab"] in flat:
        return "LM head"
    if is_matmul and dims["intermediate"] in flat or "silu" in name or "gelu" in name:
        return "MLP"
    if any(k in name for k in ATTENTION) or is_matmul:
        return "attention"
    if any(k in name.split("::")[-1] for k in MOVES):
        return "data movement"
    return "norms and element-wise"


def in_optimizer(event, spans: list[tuple[float, float]]) -> bool:
    start = event.time_range.start
    return any(a <= start <= b for a, b in spans)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--form", default="vector")
    parser.add_argument("--concepts", nargs="+", default=["power-seeking"], choices=CONCEPTS,
                        help="profile a run on each (persona answers are one token, optimism's a sentence)")
    parser.add_argument("--markdown", default=None, help="also write the output into this file's section")
    args = parser.parse_args()
    model, tokenizer = load_default_model()
    config = dict(layer=args.layer, form=args.form, epochs=args.epochs, progress=False)
    cfg = model.config
    dims = {"vocab": cfg.vocab_size, "intermediate": cfg.intermediate_size}
    with captured() as printed:
        print(f"$ python {' '.join(sys.argv)}")
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
              f"date {date.today().isoformat()}, {os.cpu_count()} cores, {platform.machine()}")
        for concept in args.concepts:
            pairs = load_pairs(concept, split="train", limit=args.pairs)
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                start = time.perf_counter()
                train(model, tokenizer, pairs, config)
                wall = time.perf_counter() - start
            print(f"{concept}, {len(pairs)} pairs:")
            report(prof, wall, dims)
        for concept in CONCEPTS:
            shuffled, bucketed = padding(model, tokenizer, load_pairs(concept, split="train"), config)
            print(f"padding in packed training batches, {concept}: {100 * shuffled:.1f}% of token slots "
                  f"as trained, {100 * bucketed:.1f}% if bucketed by length")
    if args.markdown:
        write_section(args.markdown, "profile", "Where training time goes (benchmarks/profile_step.py)",
                      as_code_block(printed.getvalue()))


def report(prof, wall: float, dims: dict[str, int]) -> None:
    events = prof.events()
    spans = [(e.time_range.start, e.time_range.end) for e in events if e.name.startswith("Optimizer.step")]
    totals: dict[str, float] = defaultdict(float)
    totals["optimizer"] = sum(b - a for a, b in spans) / 1e6
    for event in events:
        if event.name.startswith(("Optimizer.", "autograd::engine", "ProfilerStep")) or in_optimizer(event, spans):
            continue
        totals[bucket(event.name, event.input_shapes or [], dims)] += event.self_cpu_time_total / 1e6
    totals["Python and dispatch"] = max(0.0, wall - sum(totals.values()))
    print(f"train() wall time {wall:.1f} s (profiled)")
    for part, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {part:24s} {seconds:8.3f} s  {100 * seconds / wall:5.1f}%")


def padding(model, tokenizer, pairs, config: dict) -> tuple[float, float]:
    """Padded share of the packed batches' token slots: in the trainer's order, and sorted by length."""
    trainer = _Trainer(model, tokenizer, pairs, TrainConfig.from_dict(config), resolve_layout(model))
    lengths, slots = [], 0
    for key in range(len(trainer.batches)):
        batch = trainer.scoring_batch(key)
        real = (batch.attention_mask[:, 0, :, 0] == 0).sum(1) if batch.attention_mask.ndim == 4 \
            else batch.attention_mask.sum(1)  # packed: every real token attends to the row's first one
        lengths += real.tolist()
        slots += batch.input_ids.numel()
    size = trainer.config.batch_size
    ordered = sorted(lengths)
    bucketed = sum(max(ordered[i:i + size]) * len(ordered[i:i + size]) for i in range(0, len(ordered), size))
    return 1 - sum(lengths) / slots, 1 - sum(lengths) / bucketed


if __name__ == "__main__":
    main()
