"""Quality grid on the embedded model: does SPLIT buy preference without losing utility?

    python benchmarks/quality.py [--concepts power-seeking self-preservation optimism]
        [--methods CAA SFT SPLIT SPLIT+KL SPLIT-lora SPLIT-local_weight LoRA]
        [--seeds 0 1 2] [--train-pairs N] [--test-pairs N] [--split test|val]
        [--out benchmarks/results/quality] [--markdown BENCHMARKS.md]

Each cell (concept x method x seed) trains one intervention from the embedded-model presets,
measures its edit size on held-out prose, and sweeps it at matched strengths
(|m * delta| / median residual norm). Cells are saved as JSON under --out and skipped when
present, so an interrupted run resumes. At the end the script prints, and with --markdown
writes into a marked section of that file, three tables:

  (a) test accuracy at the largest swept strength whose held-out perplexity increase is within
      2% / 5% / 10% (the strength is chosen from perplexity alone, never from test labels);
  (b) perplexity increase and accuracy at the strongest strength;
  (c) trainable parameters against accuracy at the 5% budget (SPLIT-vector vs LoRA).

Means over seeds with 95% t-intervals (CAA has no randomness: it runs once and counts for
every seed, so its interval is zero). `--split val` trains on all but the last 40 training
pairs and scores those 40: use it for choosing settings, so the test split stays untouched.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from _markdown import write_section
from split_plugin import (Intervention, TrainConfig, import_peft, load_default_model, load_heldout_text,
                          load_pairs, preset_path, resolve_layout, sweep, train)
from split_plugin.data import HELDOUT_WORDS, encode_pairs
from split_plugin.fileio import atomic_write_text
from split_plugin.strength import edit_ratio, matched_multipliers

STRENGTHS = (0.0, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5)
BUDGETS = (0.02, 0.05, 0.10)
VAL_PAIRS = 40
#: method name -> (preset, overrides); "LoRA" is plain peft LoRA fine-tuning (see train_peft_lora)
METHODS = {
    "CAA": ("caa-vector", {}),
    "SFT": ("sft-vector", {}),
    "SPLIT": ("split-vector", {}),
    "SPLIT+KL": ("split-kl-vector", {}),
    "SPLIT-lora": ("split-lora", {}),
    "SPLIT-local_weight": ("split-local_weight", {}),
    "LoRA": ("sft-lora", {}),
}


def add_grid_arguments(p: argparse.ArgumentParser, methods: list[str]) -> None:
    """The grid's axes, shared with peers.py: concepts, methods, seeds and the pair counts."""
    p.add_argument("--concepts", nargs="+", default=["power-seeking", "self-preservation", "optimism"])
    p.add_argument("--methods", nargs="+", default=methods, choices=methods)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--train-pairs", type=int, default=None, help="first N training pairs (default all)")
    p.add_argument("--test-pairs", type=int, default=None, help="first N test pairs (default all)")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_grid_arguments(p, list(METHODS))
    p.add_argument("--epochs", type=int, default=None, help="override the presets' epochs")
    p.add_argument("--kl-weight", type=float, default=None, help="override SPLIT+KL's kl_weight")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--out", default="benchmarks/results/quality")
    p.add_argument("--markdown", default=None, help="write the tables into this file's quality section")
    p.add_argument("--cached-only", action="store_true",
                   help="report the cells already computed under --out; train nothing")
    return p.parse_args(argv)


# -- one cell ----------------------------------------------------------------------------------------
def cell_config(method: str, seed: int, args) -> TrainConfig:
    preset, overrides = METHODS[method]
    values = {**TrainConfig.from_yaml(preset_path(preset)).to_dict(), **overrides, "seed": seed,
              "progress": False}
    if args.epochs is not None and method != "CAA":
        values["epochs"] = args.epochs
    if method == "SPLIT+KL" and args.kl_weight is not None:
        values["kl_weight"] = args.kl_weight
    return TrainConfig.from_dict(values)


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


def run_cell(model, tokenizer, concept: str, method: str, seed: int, args, text: str) -> dict:
    train_pairs, eval_pairs = split_pairs(concept, args)
    config = cell_config(method, seed, args)
    start = time.perf_counter()
    if method == "LoRA":
        intervention = train_peft_lora(model, tokenizer, train_pairs, config)
    else:
        intervention = train(model, tokenizer, train_pairs, config)
    seconds = time.perf_counter() - start
    ratio = edit_ratio(model, tokenizer, intervention, text)
    multipliers = matched_multipliers(ratio, STRENGTHS)
    result = sweep(model, tokenizer, intervention, eval_pairs, multipliers, heldout_text=text,
                   bootstrap=0, progress=False)
    by_m = {round(r["multiplier"], 9): r for r in result.summary()}
    rows = [{"strength": s, "multiplier": m, "accuracy": by_m[round(m, 9)]["accuracy"],
             "pref": by_m[round(m, 9)]["pref_mean"], "util": by_m[round(m, 9)]["util_mean"],
             "ppl_increase": by_m[round(m, 9)]["ppl_increase"]} for s, m in zip(STRENGTHS, multipliers)]
    return {"concept": concept, "method": method, "seed": seed, "split": args.split,
            "train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs), "train_seconds": seconds,
            "params": intervention.num_parameters(), "config": config.to_dict(), "rows": rows}


def cell_tag(args) -> str:
    """The settings a saved cell depends on besides concept, method and seed (its file name)."""
    return (f"{args.split}-n{args.train_pairs or 'all'}-t{args.test_pairs or 'all'}-e{args.epochs or 'p'}"
            f"-kl{args.kl_weight if args.kl_weight is not None else 'p'}")


def split_pairs(concept: str, args):
    train_pairs = load_pairs(concept, split="train")
    if args.split == "val":
        train_pairs, eval_pairs = train_pairs[:-VAL_PAIRS], train_pairs[-VAL_PAIRS:]
    else:
        eval_pairs = load_pairs(concept, split="test")
    if args.train_pairs:
        train_pairs = train_pairs[:args.train_pairs]
    if args.test_pairs:
        eval_pairs = eval_pairs[:args.test_pairs]
    return train_pairs, eval_pairs


# -- aggregation -------------------------------------------------------------------------------------
def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of a 95% t-interval (nan half-width for one value)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    if len(values) == 1:
        return values[0], float("nan")
    from scipy import stats

    sem = float(np.std(values, ddof=1) / math.sqrt(len(values)))
    return float(np.mean(values)), float(stats.t.ppf(0.975, len(values) - 1) * sem)


def at_budget(cell: dict, budget: float) -> dict:
    """The row at the largest strength whose perplexity increase is within the budget."""
    ok = [r for r in cell["rows"] if r["ppl_increase"] is not None and r["ppl_increase"] <= budget]
    return max(ok, key=lambda r: r["strength"]) if ok else cell["rows"][0]


BLOWN_UP = 10.0  # a perplexity increase past +1000% is written as the factor: "x1312" reads, "131107.4%" does not


def fmt(mean: float, half: float, pct: bool = False) -> str:
    """mean ± 95% half-width; `pct`: a perplexity increase (a fraction) in %, or as a factor past +1000%."""
    if not math.isfinite(mean):
        return "n/a"
    if pct and mean > BLOWN_UP:
        return f"x{1 + mean:,.0f} (perplexity multiplied; seeds vary)" if math.isfinite(half) and half > 0 \
            else f"x{1 + mean:,.0f} (perplexity multiplied)"
    scale, unit = (100, "%") if pct else (1, "")
    text = f"{mean * scale:.1f}{unit}" if pct else f"{mean:.3f}"
    return text + (f" ± {half * scale:.1f}{unit}" if pct else f" ± {half:.3f}") if math.isfinite(half) else text


def tables(cells: list[dict], concepts: list[str], methods: list[str]) -> str:
    lines = []
    for concept in concepts:
        mine = [c for c in cells if c["concept"] == concept]
        if not mine:
            continue
        base = np.mean([c["rows"][0]["accuracy"] for c in mine])
        lines += [f"#### {concept} ({mine[0]['split']} split, {mine[0]['eval_pairs']} pairs; "
                  f"unsteered accuracy {base:.3f})", "",
                  "| method | seeds | params | acc @ ppl +2% | acc @ +5% | acc @ +10% | strength @ +5% "
                  "| ppl increase @ 0.5 | acc @ 0.5 | train s |", "|---|---|---|---|---|---|---|---|---|---|"]
        for method in methods:
            runs = [c for c in mine if c["method"] == method]
            if not runs:
                continue
            accs = [fmt(*mean_ci([at_budget(c, b)["accuracy"] for c in runs])) for b in BUDGETS]
            strength = fmt(*mean_ci([at_budget(c, 0.05)["strength"] for c in runs]))
            top = [c["rows"][-1] for c in runs]
            lines.append(f"| {method} | {len(runs)} | {runs[0]['params']} | {' | '.join(accs)} | {strength} | "
                         f"{fmt(*mean_ci([r['ppl_increase'] for r in top]), pct=True)} | "
                         f"{fmt(*mean_ci([r['accuracy'] for r in top]))} | "
                         f"{np.mean([c['train_seconds'] for c in runs]):.0f} |")
        lines.append("")
    return "\n".join(lines)


def _stat(cells: list[dict], concept: str, method: str, pick) -> tuple[float, float]:
    return mean_ci([pick(c) for c in cells if c["concept"] == concept and c["method"] == method])


def reading(cells: list[dict], concepts: list[str], methods: list[str]) -> str:
    """The three questions answered from the numbers above (computed, never typed)."""
    lines = ["**(a) Test accuracy at a held-out perplexity increase of at most 5%** (mean ± 95% CI):", ""]
    split_like = [m for m in ("SPLIT", "SPLIT+KL", "SPLIT-lora", "SPLIT-local_weight") if m in methods]
    for concept in concepts:
        acc = {m: _stat(cells, concept, m, lambda c: at_budget(c, 0.05)["accuracy"]) for m in methods}
        acc = {m: v for m, v in acc.items() if math.isfinite(v[0])}
        if not acc:
            continue
        best = max((m for m in split_like if m in acc), key=lambda m: acc[m][0], default=None)
        parts = ", ".join(f"{m} {fmt(*v)}" for m, v in acc.items())
        verdict = ""
        if best is not None:
            rivals = [m for m in ("CAA", "SFT") if m in acc]
            above = [m for m in rivals if acc[best][0] > acc[m][0]]
            clear = [m for m in above if acc[best][0] - acc[best][1] > acc[m][0] + acc[m][1]]
            if not math.isfinite(acc[best][1]):
                spread = ", from one seed (no interval)" if above else ""
            else:
                spread = (f", with non-overlapping intervals against {', '.join(clear)}" if clear
                          else ", but the intervals overlap" if above else "")
            verdict = (f" Best SPLIT variant: {best}; above {', '.join(above) or 'neither CAA nor SFT'}"
                       f" in the mean{spread}.")
        lines.append(f"- {concept}: {parts}.{verdict}")
    lines += ["", "**(b) Held-out perplexity increase at the strongest strength (0.5)**:", ""]
    for concept in concepts:
        ppl = {m: _stat(cells, concept, m, lambda c: c["rows"][-1]["ppl_increase"]) for m in methods}
        ppl = {m: v for m, v in ppl.items() if math.isfinite(v[0])}
        if ppl:
            lines.append(f"- {concept}: " + ", ".join(f"{m} {fmt(*v, pct=True)}" for m, v in ppl.items()) + ".")
    if "LoRA" in methods and "SPLIT" in methods:
        header_at = len(lines)
        for concept in concepts:
            rows = []
            for m in ("SPLIT", "SPLIT+KL", "LoRA", "SPLIT-lora"):
                mine = [c for c in cells if c["concept"] == concept and c["method"] == m]
                if mine:
                    rows.append(f"{m} {mine[0]['params']} parameters, accuracy "
                                f"{fmt(*mean_ci([at_budget(c, 0.05)['accuracy'] for c in mine]))}")
            if len(rows) > 1 and any(r.startswith("LoRA ") for r in rows):
                lines.append(f"- {concept}: " + "; ".join(rows) + ".")
        if len(lines) > header_at:
            lines[header_at:header_at] = ["", "**(c) Trainable parameters against accuracy at the 5% budget**:", ""]
    return "\n".join(lines) + "\n"


def header(args, cells: list[dict]) -> str:
    seeds = sorted({c["seed"] for c in cells})
    command = " ".join(["python benchmarks/quality.py", *map(shlex.quote, sys.argv[1:])])
    note = ("  \nCells: computed by the same command without `--cached-only` (it resumes per cell); "
            "the seeds column says how many finished, and a rerun fills in the rest.") if args.cached_only else ""
    return (f"Command: `{command}`{note}  \n"
            f"Date: {date.today().isoformat()}; machine: {os.cpu_count()} cores, {platform.machine()}; "
            f"torch {torch.__version__}; seeds {seeds}; strengths {list(STRENGTHS)} "
            f"(|m·delta| / median residual norm at the layer); held-out text: first {HELDOUT_WORDS} "
            "words of the bundled held-out prose.\n")


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_default_model()
    text = load_heldout_text(words=HELDOUT_WORDS)
    # seed-major: an interrupted run still covers every concept and method with the seeds it got to
    grid = [(c, m, s) for s in args.seeds for c in args.concepts for m in args.methods]
    cells = []
    bar = tqdm(grid, desc="quality grid", dynamic_ncols=True)
    for concept, method, seed in bar:
        path = out / f"{cell_tag(args)}-{concept}-{method}-{seed}.json"
        bar.set_postfix_str(f"{concept} {method} seed {seed}")
        if path.exists():
            cells.append(json.loads(path.read_text(encoding="utf-8")))
            continue
        first = next((c for c in cells if c["concept"] == concept and c["method"] == "CAA"), None)
        if method == "CAA" and first is not None:  # no randomness in CAA: one run serves every seed
            cells.append({**first, "seed": seed})
            continue
        if args.cached_only:
            continue
        cell = run_cell(model, tokenizer, concept, method, seed, args, text)
        atomic_write_text(path, json.dumps(cell, indent=1))
        cells.append(cell)
    report = (header(args, cells) + "\n" + tables(cells, args.concepts, args.methods) + "\n"
              + reading(cells, args.concepts, args.methods))
    print("\n" + report)
    if args.markdown:
        write_section(args.markdown, "quality", "Quality grid (benchmarks/quality.py)", report)
        print(f"written to {args.markdown}")


if __name__ == "__main__":
    main()
