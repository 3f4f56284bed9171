"""Training throughput of our trainer, measured side by side with slower ways to do the same steps.

Runs the same SPLIT training steps on the embedded model and prints pairs/s and ratios:
  ours              prefix cache (leading tokens all rows share run once; layer L's output kept for the
                    vector form) + LM head and top MLP on answer tokens only + both answers of a pair
                    packed in one row (the prompt runs once per sign) + all rows of a step in one forward
  unpacked          the same with one row per answer (pack_pairs: false)
  no-cache          full forward every step, full LM head (the plain computation), one joint forward
  separate-forwards full forward, full LM head, separate forwards for positive and negative rows
Then one step of each from the same parameters and draws: its loss and gradients, against ours,
show the variants compute the same step (whole runs drift apart by float rounding order).

With `--reference-checkout PATH` (a zjunlp/EasyEdit clone or `git archive` export, and
`pip install -r requirements-reference.txt`), it also trains with EasyEdit's own SPLIT trainer
(`steer/` "spilt", vector form) and with ours at the reference's configuration: the same pairs,
model, layer, batch size, factors 2..20, add and sub rows, epochs. The last line printed is then
`speed-up over the EasyEdit reference trainer: N.NNx`, from the medians of `--repeats` alternating
runs of each.

    python benchmarks/train_speed.py [--pairs 32] [--epochs 2] [--layer 15] [--form vector] [--threads N]
                                     [--reference-checkout PATH] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from _markdown import as_code_block, captured, write_section
import reference_trainer
from split_plugin import load_default_model, load_pairs, resolve_layout, train
from split_plugin.config import TrainConfig
from split_plugin.data import answer_suffix, format_prompt
from split_plugin.gguf_cache import converted_dir, default_gguf_path
from split_plugin.safety import frozen
from split_plugin.trainer import _Trainer

VARIANTS = {
    "ours": {},
    "unpacked": dict(pack_pairs=False),
    "no-cache": dict(prefix_cache=False, answer_only_head=False),
    "separate-forwards": dict(prefix_cache=False, answer_only_head=False, joint_forward=False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--form", default="vector")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--markdown", default=None, help="also write the output into this file's section")
    parser.add_argument("--reference-checkout", type=Path, default=None,
                        help="an EasyEdit checkout: also time its own SPLIT trainer against ours")
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternating runs of ours and the reference; medians are compared")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with captured() as printed:
        model, tokenizer = load_default_model()
        measure(args, model, tokenizer)
        if args.reference_checkout is None:
            print("EasyEdit reference trainer: skipped (pass --reference-checkout PATH to time it)")
        else:
            against_reference(args, model, tokenizer)
    if args.markdown:
        write_section(args.markdown, "train-speed", "Training speed (benchmarks/train_speed.py)",
                      as_code_block(printed.getvalue()))


def measure(args: argparse.Namespace, model, tokenizer) -> None:
    pairs = load_pairs("power-seeking", split="train", limit=args.pairs)
    base = dict(layer=args.layer, method="split", form=args.form, epochs=args.epochs, batch_size=4,
                lr=0.08 if args.form == "vector" else 0.01, progress=False,
                factors=[2.0, 4.0, 8.0] if args.form == "vector" else [0.5, 1.0, 2.0])
    print(f"$ python {' '.join(sys.argv)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"date {date.today().isoformat()}, {os.cpu_count()} cores, {platform.machine()}")
    rates, finals = {}, {}
    train(model, tokenizer, pairs[:8], {**base, "epochs": 1})  # untimed: the first run pays one-off start-up costs
    for name, overrides in VARIANTS.items():
        start = time.perf_counter()
        intervention = train(model, tokenizer, pairs, {**base, **overrides})
        seconds = time.perf_counter() - start
        rates[name] = args.pairs * args.epochs / seconds
        finals[name] = torch.cat([p.flatten() for p in intervention.parameters()])
        print(f"{name:17s} {seconds:7.1f} s  {rates[name]:6.2f} pairs/s")
    drift = max(float((finals[n] - finals["ours"]).abs().max()) for n in finals)
    scale = float(finals["ours"].abs().max())
    print(f"max parameter difference between variants: {drift:.2e} = {drift / scale:.1e} of the largest "
          f"parameter (same training, different float rounding order)")
    one_step(model, tokenizer, pairs[:base["batch_size"]], base)
    for name in ("unpacked", "no-cache", "separate-forwards"):
        print(f"ours / {name}: {rates['ours'] / rates[name]:.2f}x")


def one_step(model, tokenizer, pairs, base: dict) -> None:
    """Loss and gradient of one step per variant, from the same parameters and factor draws.

    Whole runs drift apart (above): their steps compound rounding-order differences, which Adam's
    per-component scaling can enlarge; one step shows whether the variants compute the same thing.
    """
    losses, grads = {}, {}
    with frozen(model):
        for name, overrides in VARIANTS.items():
            trainer = _Trainer(model, tokenizer, pairs, TrainConfig(**{**base, **overrides}), resolve_layout(model))
            with torch.no_grad():
                for p in trainer.intervention.parameters():
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
            trainer.check_packing()
            loss, _ = trainer.step_loss(0, torch.Generator().manual_seed(1))
            loss.backward()
            losses[name] = loss.item()
            grads[name] = torch.cat([p.grad.flatten() for p in trainer.intervention.parameters()])
    loss_gap = max(abs(losses[n] - losses["ours"]) for n in losses)
    grad_gap = max(float((grads[n] - grads["ours"]).abs().max()) for n in grads)
    largest = float(grads["ours"].abs().max())
    print(f"one step from the same start, every variant against ours: loss {loss_gap:.1e} apart "
          f"= {loss_gap / abs(losses['ours']):.1e} of the loss, gradients {grad_gap:.1e} apart "
          f"= {grad_gap / largest:.1e} of the largest component")


def against_reference(args: argparse.Namespace, model, tokenizer) -> None:
    """EasyEdit's trainer and ours on the same pairs at the reference's configuration, in this run."""
    reference_trainer.check_checkout(args.reference_checkout)
    pairs = load_pairs("power-seeking", split="train", limit=args.pairs)
    run = reference_trainer.ReferenceRun(layer=args.layer, batch_size=4, epochs=args.epochs,
                                         factors=[float(f) for f in range(2, 21, 2)], sub_rows=True)
    suffix = answer_suffix(tokenizer)
    records = reference_trainer.as_records([format_prompt(tokenizer, p.question) for p in pairs],
                                           [p.positive + suffix for p in pairs], [p.negative + suffix for p in pairs])
    ours = dict(layer=run.layer, method="split", form="vector", epochs=run.epochs, batch_size=run.batch_size,
                lr=run.lr, factors=list(run.factors), sub_rows=run.sub_rows, pos_weight=run.pos_weight,
                neg_weight=run.neg_weight, margin_weight=run.margin_weight, margin=run.margin, progress=False)
    print(f"reference configuration: {len(pairs)} pairs, {run.epochs} epoch(s), batch {run.batch_size}, "
          f"add and sub rows, factors 2..20, layer {run.layer}, fp32")
    ours_s, theirs_s = [], []
    for _ in range(args.repeats):  # alternating, so a slow spell of the machine hits both
        start = time.perf_counter()
        train(model, tokenizer, pairs, ours)
        ours_s.append(time.perf_counter() - start)
        theirs_s.append(reference_trainer.time_reference(args.reference_checkout,
                                                         converted_dir(default_gguf_path()), records, run))
    done = len(pairs) * run.epochs
    ours_rate, theirs_rate = done / statistics.median(ours_s), done / statistics.median(theirs_s)
    for label, rate, seconds in (("ours at that configuration", ours_rate, ours_s),
                                 ("EasyEdit reference trainer", theirs_rate, theirs_s)):
        each = ", ".join(f"{done / x:.2f}" for x in seconds)
        print(f"{label:<32}{rate:6.2f} pairs/s  (median of {len(seconds)} runs: {each})")
    print(f"speed-up over the EasyEdit reference trainer: {ours_rate / theirs_rate:.2f}x")


if __name__ == "__main__":
    main()
