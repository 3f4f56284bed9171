"""The quality grid's cells: our methods from their presets (and plain peft LoRA), the protocol's
pair splits, one cell trained and evaluated, and the cache of cells that lets a cut-short run resume.

Shared by quality.py, peers.py (our methods' cells), claims.py and trained_range.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from split_plugin import (Intervention, SplitPluginError, TrainConfig, import_peft, load_pairs, preset_path,
                          resolve_layout, train)
from split_plugin.analysis.protocol import PROTOCOL_VERSION, RELATIVE_GRID, Evaluation, evaluate
from split_plugin.data import HELDOUT_WORDS, encode_pairs

VAL_PAIRS = 40
#: method name -> (preset, overrides); "LoRA" is plain peft LoRA fine-tuning (see train_peft_lora)
METHODS = {
    "CAA": ("caa-vector", {}),
    "SFT": ("sft-vector", {}),
    "SPLIT": ("split-vector", {}),
    "SPLIT+KL": ("split-kl-vector", {}),
    "SPLIT-tuned": ("split-tuned-vector", {}),
    "SPLIT-lora": ("split-lora", {}),
    "SPLIT-local_weight": ("split-local_weight", {}),
    "LoRA": ("sft-lora", {}),
}
#: the SPLIT objective's variants among METHODS: "the best SPLIT form" is picked from these on validation
SPLIT_VARIANTS = ("SPLIT", "SPLIT+KL", "SPLIT-tuned", "SPLIT-lora", "SPLIT-local_weight")


def add_grid_arguments(p: argparse.ArgumentParser, methods: list[str]) -> None:
    """The grid's axes, shared with peers.py: concepts, methods, seeds and the pair counts."""
    p.add_argument("--concepts", nargs="+", default=["power-seeking", "self-preservation", "optimism"])
    p.add_argument("--methods", nargs="+", default=methods, choices=methods)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--train-pairs", type=int, default=None,
                   help=f"first N training pairs (default all but the last {VAL_PAIRS}, which validate)")
    p.add_argument("--test-pairs", type=int, default=None, help="first N test pairs (default all)")


# -- one cell ----------------------------------------------------------------------------------------
def preset_config(preset: str, seed: int, overrides: dict) -> TrainConfig:
    """A shipped preset with `overrides`, at `seed`, without a progress bar."""
    values = {**TrainConfig.from_yaml(preset_path(preset)).to_dict(), **overrides, "seed": seed,
              "progress": False}
    return TrainConfig.from_dict(values)


def cell_config(method: str, seed: int, args) -> TrainConfig:
    """The training config of one cell: the method's preset, with the grid's --epochs / --kl-weight."""
    preset, overrides = METHODS[method]
    overrides = dict(overrides)
    if args.epochs is not None and method != "CAA":
        overrides["epochs"] = args.epochs
    if method == "SPLIT+KL" and args.kl_weight is not None:
        overrides["kl_weight"] = args.kl_weight
    return preset_config(preset, seed, overrides)


def train_timed(model, tokenizer, pairs, config: TrainConfig, peft_lora: bool) -> tuple[Intervention, float]:
    """Train with plain peft LoRA or with our trainer; the intervention and the seconds it took."""
    start = time.perf_counter()
    intervention = (train_peft_lora if peft_lora else train)(model, tokenizer, pairs, config)
    return intervention, time.perf_counter() - start


def train_peft_lora(model, tokenizer, pairs, config: TrainConfig) -> Intervention:
    """Plain peft LoRA fine-tuning on the positive answers (the paper's "LoRA"), read back as ours.

    peft wraps the layer's down projection only (rank and alpha from the sft-lora preset), trains
    with its own modules and a plain loop, saves a standard adapter, and the model is unwrapped
    afterwards; `import_peft` turns the adapter into a lora intervention so it sweeps like the rest.
    """
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(config.seed)
    layout = resolve_layout(model)
    proj, name = layout.down_proj(config.layer), layout.down_proj_name(config.layer)
    peft_model = get_peft_model(model, LoraConfig(r=config.rank, lora_alpha=config.alpha or config.rank,
                                                  target_modules=[name], lora_dropout=0.0))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(config.seed)).tolist()
    try:
        for _ in range(config.epochs):
            for start in range(0, len(order), config.batch_size):
                batch = encode_pairs(tokenizer, [pairs[i] for i in order[start:start + config.batch_size]])
                rows = slice(0, None, 2)  # the positive answer of each pair
                out = peft_model(input_ids=batch.input_ids[rows], attention_mask=batch.attention_mask[rows],
                                 labels=batch.labels[rows], use_cache=False)
                optimizer.zero_grad()
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
        with tempfile.TemporaryDirectory() as tmp:
            peft_model.save_pretrained(tmp)
            model = peft_model.unload()  # the user's model, without LoRA layers
            return import_peft(tmp, model)
    finally:
        if layout.down_proj(config.layer) is not proj:  # still wrapped: an error came first
            peft_model.unload()


def split_pairs(concept: str, args) -> tuple[list, list, list]:
    """(training, validation, test) pairs: validation is the training split's last VAL_PAIRS pairs."""
    pairs = load_pairs(concept, split="train")
    if len(pairs) <= VAL_PAIRS:
        raise SplitPluginError(f"concept {concept!r} has {len(pairs)} training pairs; the protocol holds back "
                               f"the last {VAL_PAIRS} for validation, so it needs more than {VAL_PAIRS}")
    test = load_pairs(concept, split="test")
    return pairs[:-VAL_PAIRS][:args.train_pairs], pairs[-VAL_PAIRS:], test[:args.test_pairs]


def run_cell(model, tokenizer, concept: str, method: str, seed: int, args, text: str) -> Evaluation:
    """Train one method and evaluate it under the protocol; the Evaluation is the cell."""
    train_pairs, val_pairs, test_pairs = split_pairs(concept, args)
    config = cell_config(method, seed, args)
    intervention, seconds = train_timed(model, tokenizer, train_pairs, config, peft_lora=method == "LoRA")
    evaluation = evaluate(model, tokenizer, intervention, val_pairs, {"test": test_pairs}, text, name=method,
                          trained=[1.0] if method == "LoRA" else None, train_seconds=seconds)
    evaluation.extra.update(concept=concept, method=method, seed=seed, config=config.to_dict(),
                            train_pairs=len(train_pairs), validation_pairs=len(val_pairs),
                            test_pairs=len(test_pairs))
    return evaluation


def cell_tag(args) -> str:
    """The settings a saved cell depends on besides concept, method and seed (its file name)."""
    return (f"p{PROTOCOL_VERSION}-n{args.train_pairs or 'all'}-t{args.test_pairs or 'all'}-e{args.epochs or 'p'}"
            f"-kl{args.kl_weight if args.kl_weight is not None else 'p'}")


def cell_path(args, out: Path) -> Callable[[str, str, int], Path]:
    """Where a cell lives: the grid flags, concept, method, seed and a hash of its training config
    (so a changed preset computes new cells instead of reusing stale ones)."""
    def path_of(concept: str, method: str, seed: int) -> Path:
        return out / f"{cell_tag(args)}-{concept}-{method}-{seed}-{cell_config(method, seed, args).digest(8)}.json"
    return path_of


def collect(grid: Sequence[tuple[str, str, int]], path_of: Callable[[str, str, int], Path],
            run: Callable[[str, str, int], Evaluation], deterministic: Sequence[str], cached_only: bool,
            desc: str) -> list[Evaluation]:
    """Each (concept, method, seed) cell from its file, or computed and saved; a method in
    `deterministic` runs once per concept and that run counts for every seed."""
    cells: list[Evaluation] = []
    bar = tqdm(grid, desc=desc, dynamic_ncols=True)
    for concept, method, seed in bar:
        bar.set_postfix_str(f"{concept} {method} seed {seed}")
        path = path_of(concept, method, seed)
        if path.exists():
            cells.append(Evaluation.from_json(path))
            continue
        first = next((c for c in cells if c.extra["concept"] == concept and c.name == method), None)
        if method in deterministic and first is not None:
            cells.append(dataclasses.replace(first, extra={**first.extra, "seed": seed}))
            continue
        if cached_only:
            continue
        cell = run(concept, method, seed)
        cell.to_json(path)
        cells.append(cell)
    return cells


# -- reading cells ----------------------------------------------------------------------------------
def runs(cells: list[Evaluation], concept: str, method: str) -> list[Evaluation]:
    """The cells of one method on one concept, one per seed."""
    return [c for c in cells if c.extra["concept"] == concept and c.name == method]


def best_on_validation(cells: list[Evaluation], concept: str, methods: Sequence[str],
                       budget: float = 0.05) -> str | None:
    """The method among `methods` with cells on `concept` whose mean validation accuracy at the
    budget's choice is highest (first on ties): variants are picked there, the test split picks nothing."""
    present = [m for m in methods if runs(cells, concept, m)]
    return max(present, key=lambda m: np.mean([e.at_budget(budget)["val_accuracy"] for e in runs(cells, concept, m)]),
               default=None)


def at_m1(e: Evaluation) -> dict:
    """The validation row at the trained multiplier m = 1."""
    return next(r for r in e.trained_rows() if r["multiplier"] == 1.0)


def top_trained(e: Evaluation) -> dict:
    """The validation row at the largest multiplier the method was trained at."""
    return max(e.trained_rows(), key=lambda r: r["multiplier"])


def unsteered(cells: list[Evaluation]) -> float:
    """Mean test accuracy at m = 0 (the same model for every method of a concept)."""
    return float(np.mean([c.row(0.0)["accuracy"] for c in cells]))


def protocol_line() -> str:
    """How every method was evaluated, for the reports' headers."""
    return (f"Protocol (split_plugin/analysis/protocol.py): relative strengths |m·delta| / median residual norm "
            f"{RELATIVE_GRID[0]:g} to {RELATIVE_GRID[-1]:g} ({len(RELATIVE_GRID)} log-spaced points) plus the "
            f"multipliers each method was trained at; the strength per budget chosen on {VAL_PAIRS} validation "
            "pairs (the training split's last) as the most accurate m >= 0 within the held-out perplexity budget; "
            f"the test split scored at those strengths only; held-out text: first {HELDOUT_WORDS} words of the "
            "bundled prose.")
