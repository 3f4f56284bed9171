"""Memory: peak RSS of training and of a sweep on the embedded model, and an on-paper estimate for 8B models.

    python benchmarks/memory.py [--pairs 16] [--layer 15] [--markdown BENCHMARKS.md]

Measured: each job runs in a fresh child process (so one job's peak does not hide another's)
and reports its peak resident set size; "load only" is the model loaded and nothing else, so
the difference is what the job itself needs.

On paper, for the shapes of Llama-3-8B and Qwen2.5-7B (bf16 frozen weights, the intervention
at the middle layer L = N/2, a batch of `rows` sequences of `tokens` tokens):
- weights: parameters x 2 bytes;
- trainable: the form's parameters x 16 bytes (fp32 master copy, gradient, AdamW's two moments);
- activations kept for the backward of layers L..N-1 (L+1..N-1 for the vector form, whose
  layer L output is cached; weights frozen, so only what the input gradient needs): per token
  and layer about 7 h + 2 kv + 4 i values in bf16 (norm outputs, q/k/v, attention output,
  residuals, gate/up/activation/product of the MLP), attention probabilities not stored (SDPA);
- the prefix cache: the input of layer L for every training pair, bf16 (and layer L's output
  for the vector form);
- logits: answer tokens only (a few per row) x vocab in fp32.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
from dataclasses import dataclass
from datetime import date

from _markdown import as_code_block, captured, write_section

GIB = 1024 ** 3


@dataclass(frozen=True)
class Shape:
    name: str
    params: float
    layers: int
    hidden: int
    kv: int
    intermediate: int
    vocab: int


SHAPES = [
    Shape("Llama-3-8B", 8.03e9, 32, 4096, 1024, 14336, 128256),
    Shape("Qwen2.5-7B", 7.62e9, 28, 3584, 512, 18944, 152064),
]


def trainable(shape: Shape, form: str, rank: int = 4) -> int:
    """Parameters of one intervention: vector db [h]; lora A [i, r], B [r, h]; local_weight dW [i, h] + db [h]."""
    return {"vector": shape.hidden,
            "lora": rank * (shape.intermediate + shape.hidden),
            "local_weight": shape.intermediate * shape.hidden + shape.hidden}[form]


def estimate(shape: Shape, form: str, rows: int, tokens: int, pairs: int, answer_tokens: int = 4) -> dict:
    """Bytes for each part of one training step (see the module docstring for the model)."""
    replayed = form == "vector"  # layer L's output is cached and layer L does not run
    above = shape.layers - shape.layers // 2 - replayed
    per_token_layer = 2 * (7 * shape.hidden + 2 * shape.kv + 4 * shape.intermediate)
    return {"weights": shape.params * 2,
            "trainable": trainable(shape, form) * 16,
            "activations": per_token_layer * above * rows * tokens,
            "prefix cache": pairs * tokens * shape.hidden * 2 * (1 + replayed),
            "logits": rows * answer_tokens * shape.vocab * 4}


def print_estimates(rows: int, tokens: int, pairs: int) -> None:
    print(f"on paper: bf16 weights, fp32 trainable + AdamW, batch of {rows} rows x {tokens} tokens, "
          f"{pairs} pairs cached, layer L = N/2")
    print(f"{'model':12s} {'form':13s} {'trainable':>10s} {'weights':>8s} {'optim':>8s} {'activ.':>8s} "
          f"{'prefix':>8s} {'total':>8s}  (GiB)")
    for shape in SHAPES:
        for form in ("vector", "lora", "local_weight"):
            parts = estimate(shape, form, rows, tokens, pairs)
            print(f"{shape.name:12s} {form:13s} {trainable(shape, form):10,d} {parts['weights'] / GIB:8.2f} "
                  f"{parts['trainable'] / GIB:8.3f} {parts['activations'] / GIB:8.2f} "
                  f"{parts['prefix cache'] / GIB:8.2f} {sum(parts.values()) / GIB:8.2f}")


def child(job: str, pairs: int, layer: int) -> None:
    """Run one job in this process and print its peak RSS in MiB as JSON."""
    import split_plugin as sp

    model, tok = sp.load_default_model()
    data = sp.load_pairs("power-seeking", split="train", limit=pairs)
    if job == "train":
        sp.train(model, tok, data, dict(layer=layer, epochs=1, progress=False))
    elif job == "sweep":
        vector = sp.train(model, tok, data[:4], dict(layer=layer, epochs=1, progress=False, method="caa"))
        sp.sweep(model, tok, vector, data, multipliers=[float(m) for m in range(-10, 11)],
                 progress=False, bootstrap=10)
    print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def measured(job: str, pairs: int, layer: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", job, "--pairs", str(pairs), "--layer", str(layer)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--child", choices=["load", "train", "sweep"], help=argparse.SUPPRESS)
    parser.add_argument("--markdown", default=None, help="also write the output into this file's section")
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.pairs, args.layer)
    with captured() as printed:
        print(f"$ python {' '.join(sys.argv)}")
        print(f"date {date.today().isoformat()}, {os.cpu_count()} cores, {platform.machine()}")
        base = measured("load", args.pairs, args.layer)
        print(f"embedded model, fp32, layer {args.layer}, {args.pairs} power-seeking pairs; peak RSS of a fresh process:")
        print(f"  load only                         {base:7.0f} MiB")
        for job, what in (("train", "SPLIT vector training, 1 epoch"), ("sweep", "sweep, 21 multipliers")):
            peak = measured(job, args.pairs, args.layer)
            print(f"  {what:33s} {peak:7.0f} MiB  (+{peak - base:.0f} MiB over load only)")
        print_estimates(rows=8, tokens=128, pairs=1000)
    if args.markdown:
        write_section(args.markdown, "memory", "Memory (benchmarks/memory.py)", as_code_block(printed.getvalue()))


if __name__ == "__main__":
    main()
