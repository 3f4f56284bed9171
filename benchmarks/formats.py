"""Does steering follow the concept or the prompt format? Accuracy per prompt format.

    python benchmarks/formats.py [--concepts power-seeking self-preservation] [--method split-lora]
        [--seeds 0] [--train-pairs 96] [--out benchmarks/results/formats] [--markdown BENCHMARKS.md]
        [--section formats]

For each persona concept the preset is trained twice on the same statements: once in the
bundled format only ("instructed"), once on a mix (`split_plugin.formats.vary_formats`: every
persona format in turn, a quarter of the pairs replaced by free-text pairs of the concept).
Each is evaluated under the comparison protocol, its strength chosen within +5% held-out
perplexity on the validation pairs (the training split's last 40, in the same style as its
training data), and the test split is scored in every format (`format_sets`). The table gives
test accuracy per format and the share of the in-format gain over unsteered kept without the
instruction line (`bare`). Cells are saved under --out and reused.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import command, publish  # noqa: E402
from _results import results_dir  # noqa: E402

from split_plugin import (TrainConfig, format_sets, load_default_model, load_heldout_text, load_pairs,  # noqa: E402
                          preset_path, train, vary_formats)
from split_plugin.analysis.protocol import Evaluation, evaluate  # noqa: E402
from split_plugin.data import HELDOUT_WORDS  # noqa: E402

VAL_PAIRS = 40
BUDGET = 0.05
TRAINING = ("instructed only", "mixed formats")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concepts", nargs="+", default=["power-seeking", "self-preservation"])
    p.add_argument("--method", default="split-lora", help="a preset name")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--train-pairs", type=int, default=96)
    p.add_argument("--out", default=results_dir("formats"))
    p.add_argument("--markdown", default=None, help="write the table into this file's --section")
    p.add_argument("--section", default="formats", help="the Markdown section (one per preset, e.g. formats-tuned)")
    p.add_argument("--cached-only", action="store_true", help="report the saved cells; train nothing")
    return p.parse_args(argv)


def data(concept: str, training: str, n_train: int, seed: int):
    """(training, validation) pairs: the bundled format, or the mixed-format version of the same split."""
    pairs = load_pairs(concept, split="train")
    if training == "mixed formats":
        pairs = vary_formats(pairs, freetext=load_pairs(concept, split="freetext-train"), seed=seed)
    return pairs[:-VAL_PAIRS][:n_train], pairs[-VAL_PAIRS:]


def run_cell(model, tokenizer, config: TrainConfig, concept: str, training: str, args, text: str) -> Evaluation:
    train_pairs, val_pairs = data(concept, training, args.train_pairs, config.seed)
    start = time.perf_counter()
    intervention = train(model, tokenizer, train_pairs, config)
    seconds = time.perf_counter() - start
    evaluation = evaluate(model, tokenizer, intervention, val_pairs, format_sets(concept, "test"), text,
                          name=training, train_seconds=seconds)
    evaluation.extra.update(concept=concept, training=training, seed=config.seed)
    return evaluation


def gain_kept(e: Evaluation, fmt: str, reference: str = "instructed") -> float:
    """(accuracy - unsteered) in `fmt` over the same in the reference format, at the +5% choice."""
    gain = lambda t: e.at_budget(BUDGET, t)["accuracy"] - e.row(0.0, t)["accuracy"]  # noqa: E731
    return gain(fmt) / gain(reference) if gain(reference) > 0 else float("nan")


def table(cells: list[Evaluation]) -> list[str]:
    formats = list(cells[0].tests)
    lines = ["| concept | trained on | seeds | " + " | ".join(formats) + " | bare gain kept |",
             "|---|---|---|" + "---|" * (len(formats) + 1)]
    for concept in dict.fromkeys(c.extra["concept"] for c in cells):
        unsteered = [c for c in cells if c.extra["concept"] == concept][0]
        lines.append(f"| {concept} | (unsteered) | | " + " | ".join(
            f"{unsteered.row(0.0, f)['accuracy']:.3f}" for f in formats) + " | |")
        for training in TRAINING:
            mine = [c for c in cells if c.extra["concept"] == concept and c.name == training]
            if not mine:
                continue
            accs = [np.mean([c.at_budget(BUDGET, f)["accuracy"] for c in mine]) for f in formats]
            kept = [k for k in (gain_kept(c, "bare") for c in mine) if np.isfinite(k)]
            lines.append(f"| {concept} | {training} | {len(mine)} | " + " | ".join(f"{a:.3f}" for a in accs)
                         + f" | {f'{np.mean(kept):.0%}' if kept else 'n/a (no in-format gain)'} |")
    return lines


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = (None, None) if args.cached_only else load_default_model()
    text = load_heldout_text(words=HELDOUT_WORDS)
    cells = []
    for seed in args.seeds:
        for concept in args.concepts:
            for training in tqdm(TRAINING, desc=f"{concept} seed {seed}"):
                values = {**TrainConfig.from_yaml(preset_path(args.method)).to_dict(), "seed": seed, "progress": False}
                config = TrainConfig.from_dict(values)
                path = out / f"{concept}-{training.replace(' ', '-')}-n{args.train_pairs}-{config.digest()}.json"
                if path.exists():
                    cells.append(Evaluation.from_json(path))
                elif not args.cached_only:
                    cell = run_cell(model, tokenizer, config, concept, training, args, text)
                    cell.to_json(path)
                    cells.append(cell)
    if not cells:
        print("no cells yet: run without --cached-only")
        return
    lines = [f"Command: `{command('formats.py', argv)}`  ",
             f"Preset {args.method}; {args.train_pairs} training pairs; test accuracy per prompt format at the "
             f"strength chosen within +{BUDGET:.0%} held-out perplexity on validation pairs in the training "
             "style. Formats: split_plugin/formats.py (`instructed` is the bundled one; `free-text` are the "
             "concept's free-text test pairs). Bare gain kept: (bare accuracy - unsteered) / (instructed "
             "accuracy - unsteered).", "", *table(cells)]
    title = "Accuracy per prompt format (benchmarks/formats.py)" + (f": {args.method}" if args.section != "formats" else "")
    publish("\n".join(lines), args.markdown, args.section, title)


if __name__ == "__main__":
    main()
