"""Low-rank edits at the multipliers they were trained for, on a validation split.

    python benchmarks/trained_range.py [--concept power-seeking] [--variants ...] [--markdown BENCHMARKS.md]

quality.py and peers.py sweep every method at matched strengths (|m·delta| / median residual
norm from 0.025 to 0.5). A lora-form intervention trained at factors 0.2..2 can learn an edit
far smaller than 0.025 of the residual norm at m = 1, so those grids only see it extrapolated
several times past its training range. This script trains lora variants on the first 96 of
the training pairs minus the last 40, and scores those 40 held-back training pairs (never the
test split) at m = 0, 0.5, 1 and 2, with the edit's strength at m = 1, so one can see where each
variant works and which training choice (sub rows, the factor range) shrinks its edit.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cells import VAL_PAIRS, preset_config, train_timed  # noqa: E402  (the validation split, peft LoRA)
from _markdown import write_section  # noqa: E402

from split_plugin import load_default_model, load_heldout_text, load_pairs, sweep  # noqa: E402
from split_plugin.data import HELDOUT_WORDS  # noqa: E402
from split_plugin.strength import edit_ratio  # noqa: E402

MULTIPLIERS = (0.0, 0.5, 1.0, 2.0)
#: name -> (preset, overrides); "LoRA (peft)" is quality.py's plain peft fine-tuning at m = 1
VARIANTS = {
    "SPLIT-lora (preset)": ("split-lora", {}),
    "SPLIT-lora, no sub rows": ("split-lora", {"sub_rows": False}),
    "SPLIT-lora, m = 1 only": ("split-lora", {"factors": [1.0]}),
    "SPLIT-lora, m = 1 only, no sub rows": ("split-lora", {"factors": [1.0], "sub_rows": False}),
    "SFT-lora (ours, preset)": ("sft-lora", {}),
    "LoRA (peft)": ("sft-lora", {}),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concept", default="power-seeking")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--train-pairs", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", default=None, help="write the table into this file's trained-range section")
    return p.parse_args(argv)


def run_variant(model, tokenizer, name: str, train_pairs, val_pairs, text: str, seed: int) -> list[str]:
    preset, overrides = VARIANTS[name]
    config = preset_config(preset, seed, overrides)
    intervention, seconds = train_timed(model, tokenizer, train_pairs, config, peft_lora=name == "LoRA (peft)")
    strength = edit_ratio(model, tokenizer, intervention, text)
    result = sweep(model, tokenizer, intervention, val_pairs, list(MULTIPLIERS), heldout_text=text,
                   bootstrap=0, progress=False)
    rows = dict(zip(MULTIPLIERS, result.summary()))  # joined by position: MULTIPLIERS is ascending, as summary() is
    cells = [f"{rows[m]['accuracy']:.3f} / {rows[m]['pref_mean']:+.2f} / {rows[m]['ppl_increase']:+.1%}"
             for m in MULTIPLIERS[1:]]
    return [name, f"{strength:.4f}", f"{rows[0.0]['accuracy']:.3f}", *cells, f"{seconds:.0f}"]


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    model, tokenizer = load_default_model()
    pairs = load_pairs(args.concept, split="train")
    train_pairs, val_pairs = pairs[:-VAL_PAIRS][:args.train_pairs], pairs[-VAL_PAIRS:]
    text = load_heldout_text(words=HELDOUT_WORDS)
    lines = [f"Command: `python benchmarks/trained_range.py {' '.join(map(shlex.quote, argv))}`  ",
             f"Date: {date.today().isoformat()}; machine: {os.cpu_count()} cores, {platform.machine()}; "
             f"torch {torch.__version__}; concept {args.concept}, {len(train_pairs)} training pairs, scored on "
             f"the {len(val_pairs)} held-back training pairs (validation, not test); seed {args.seed}.", "",
             "Each multiplier's cell: accuracy / mean preference log-odds / held-out perplexity increase. "
             "Strength = |m·delta| / median residual norm at m = 1 (quality.py's grid starts at 0.025).", "",
             "| variant | strength at m = 1 | acc m = 0 | m = 0.5 | m = 1 | m = 2 | train s |",
             "|---|---|---|---|---|---|---|"]
    for name in args.variants:
        print(f"[trained_range] {name} ...", flush=True)
        row = run_variant(model, tokenizer, name, train_pairs, val_pairs, text, args.seed)
        lines.append("| " + " | ".join(row) + " |")
        print(lines[-1], flush=True)
    report = "\n".join(lines) + "\n"
    print("\n" + report)
    if args.markdown:
        write_section(args.markdown, "trained-range", "Low-rank edits at their trained multipliers "
                      "(benchmarks/trained_range.py)", report)
        print(f"written to {args.markdown}")


if __name__ == "__main__":
    main()
