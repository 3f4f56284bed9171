"""`split-steer sweep`: sweep one or more saved interventions and write a report folder.

    split-steer sweep --intervention runs/split --intervention runs/caa --name SPLIT --name CAA \
        --data power-seeking --split test --multipliers -8,-4,0,4,8 --out reports/sweep

`--multipliers` takes a comma list or an inclusive range `start:stop:step` (e.g. -10:10:1).
"""
from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from ..errors import SplitPluginError

# argparse (before Python 3.13) takes "-8,-4,0" for an option; accept number lists as values
_NUMBER_LIST = re.compile(r"^-[\d.]+([,:][-+\d.\s]*)*$")


def parse_multipliers(text: str) -> list[float]:
    """"-8,-4,0,4,8" or an inclusive range "-10:10:2" -> list of floats (errors say what is wrong)."""
    text = str(text).strip()
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = math.floor((stop - start) / step + 1e-9) + 1
            return [round(start + i * step, 10) for i in range(count)]
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SplitPluginError(f"cannot read multipliers {text!r}; write a comma list like -8,-4,0,4,8 "
                               "or a range start:stop:step like -10:10:1 (step > 0)") from None
    if not values:
        raise SplitPluginError("--multipliers is empty; give e.g. -8,-4,0,4,8")
    return values


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `split-steer sweep`."""
    parser._negative_number_matcher = _NUMBER_LIST  # let "--multipliers -8,-4,0" parse
    parser.add_argument("--intervention", action="append", required=True,
                        help="a saved intervention folder or a peft LoRA adapter folder (repeatable)")
    parser.add_argument("--name", action="append", default=None,
                        help="a name per --intervention, in order (default: the folder name)")
    parser.add_argument("--data", required=True, help="a bundled dataset name or a data file")
    parser.add_argument("--split", default="test", help="which split of a bundled dataset: train or test")
    parser.add_argument("--multipliers", default="-8,-4,-2,0,2,4,8",
                        help="comma list (-8,-4,0,4,8) or inclusive range start:stop:step")
    parser.add_argument("--out", required=True, help="report folder (replaced atomically)")
    parser.add_argument("--model", default="default", help="'default' (embedded SmolLM2) or a local HF folder")
    parser.add_argument("--heldout", action=argparse.BooleanOptionalAction, default=True,
                        help="measure held-out perplexity on the bundled prose")
    parser.add_argument("--heldout-words", type=int, default=None,
                        help="words of the bundled prose that perplexity is measured on (more: steadier, "
                             "slower; default: 400, split_plugin.data.HELDOUT_WORDS)")
    parser.add_argument("--manifold", action="store_true",
                        help="also measure off-manifold distances (slower: one more pass per multiplier)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N pairs (default: all)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs scored per forward pass")
    parser.add_argument("--max-length", type=int, default=256, help="longest tokenized prompt + answer")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap resamples for the 95%% confidence intervals (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    parser.add_argument("--system-prompt", default=None, help="system prompt put before every question")
    parser.add_argument("--title", default=None, help="report title (default: the data and split)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _names(args: argparse.Namespace) -> list[str]:
    """One unique name per intervention: --name values, else the folder names."""
    paths = args.intervention
    names = list(args.name or [])
    if names and len(names) != len(paths):
        raise SplitPluginError(f"{len(names)} --name values for {len(paths)} --intervention folders; "
                               "give one name per intervention or none")
    names = names or [Path(p).resolve().name for p in paths]
    if len(set(names)) != len(names):
        raise SplitPluginError(f"duplicate method names {names}; pass --name for each intervention")
    return names


def load_any_intervention(directory: str | Path, model):
    """Our saved intervention, or a peft LoRA adapter (adapter_config.json present)."""
    from ..intervention import Intervention
    from ..serialization import import_peft

    directory = Path(directory)
    if not directory.is_dir():
        raise SplitPluginError(f"intervention folder {directory} does not exist")
    if (directory / "adapter_config.json").is_file():
        return import_peft(directory, model)
    return Intervention.from_pretrained(directory)


def _load_model(name: str):
    from ..models import load_default_model, load_model

    return load_default_model() if name in ("default", None) else load_model(name)


def _heldout_text(args: argparse.Namespace) -> str | None:
    """The first --heldout-words words of the bundled prose, or None with --no-heldout."""
    from ..data import HELDOUT_WORDS, load_heldout_text

    if not args.heldout:
        return None
    words = HELDOUT_WORDS if args.heldout_words is None else args.heldout_words
    if words < 1:
        raise SplitPluginError(f"--heldout-words must be a positive number of words, got {words}")
    return load_heldout_text(words=words)


def run_sweep_command(args: argparse.Namespace) -> None:
    """Load the model, data and interventions, sweep each, write the report, print the verdict."""
    from ..data import load_pairs
    from .manifold import manifold_report
    from .report import write_report
    from .sweeping import sweep

    multipliers = parse_multipliers(args.multipliers)
    names = _names(args)
    model, tokenizer = _load_model(args.model)
    pairs = load_pairs(args.data, split=args.split, limit=args.limit)
    interventions = {n: load_any_intervention(p, model) for n, p in zip(names, args.intervention)}
    progress = not args.no_progress
    results, manifolds = {}, {}
    for name, intervention in interventions.items():
        print(f"sweeping {name}: {intervention.form} at layer {intervention.layer}, {len(pairs)} pairs, "
              f"{len(multipliers)} multipliers")
        results[name] = sweep(model, tokenizer, intervention, pairs, multipliers,
                              batch_size=args.batch_size, max_length=args.max_length,
                              heldout_text=_heldout_text(args),
                              system_prompt=args.system_prompt, bootstrap=args.bootstrap,
                              seed=args.seed, progress=progress)
        if args.manifold:
            manifolds[name] = manifold_report(model, tokenizer, intervention, pairs, multipliers,
                                              batch_size=args.batch_size, system_prompt=args.system_prompt,
                                              seed=args.seed, progress=progress)
    title = args.title or f"Sweep on {args.data} ({args.split})"
    out = write_report(results, args.out, manifold=manifolds or None, title=title)
    print((out / "report.md").read_text(encoding="utf-8").split("\n")[2])  # the verdict line
    print(f"report written to {out}")
