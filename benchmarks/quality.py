"""Quality grid on the embedded model: does SPLIT buy preference without losing utility?

    python benchmarks/quality.py [--concepts power-seeking self-preservation optimism]
        [--methods CAA SFT SPLIT SPLIT+KL SPLIT-lora SPLIT-local_weight LoRA]
        [--seeds 0 1 2] [--train-pairs N] [--test-pairs N] [--cached-only]
        [--out benchmarks/results/quality] [--figure docs/quality_frontier.png] [--markdown BENCHMARKS.md]

Each cell (concept x method x seed) trains one intervention from the embedded-model presets on
the training split minus its last 40 pairs (the first --train-pairs of them) and evaluates it
under the comparison protocol (split_plugin.analysis.protocol): validation on those 40 held-back
pairs at the relative-strength grid (|m * delta| / median residual norm, 0.001 to 1) plus the
multipliers it was trained at (m = 1 alone for CAA and for plain peft LoRA), the operating
strength per perplexity budget chosen there by `best_within`, and the test split (its first
--test-pairs) scored at those chosen strengths only. A cell is the Evaluation's JSON under --out
(concept, method, seed and training config in its `extra`), skipped when present, so an
interrupted run resumes; `--cached-only` reports what is there and trains nothing.

Per concept the script prints, and with --markdown writes into the "quality" section of that file:
test accuracy within +2% / +5% / +10% held-out perplexity, the relative strength chosen on
validation for +5% and its perplexity change, validation accuracy at m = 1, the perplexity change
at the largest trained multiplier, parameters and training seconds; means over seeds with 95%
t-intervals (CAA has no randomness: it runs once and counts for every seed, so its interval is
zero). --figure: test accuracy against the perplexity budget, one line per method, mean over seeds.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import write_section  # noqa: E402

from split_plugin import (Intervention, SplitPluginError, TrainConfig, import_peft, load_default_model,  # noqa: E402
                          load_heldout_text, load_pairs, preset_path, resolve_layout, train)
from split_plugin.analysis.protocol import (BUDGETS, FRONTIER_BUDGETS, PROTOCOL_VERSION, RELATIVE_GRID,  # noqa: E402
                                            Evaluation, evaluate)
from split_plugin.data import HELDOUT_WORDS, encode_pairs  # noqa: E402
from split_plugin.fileio import atomic_path  # noqa: E402

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
    p.add_argument("--train-pairs", type=int, default=None,
                   help=f"first N training pairs (default all but the last {VAL_PAIRS}, which validate)")
    p.add_argument("--test-pairs", type=int, default=None, help="first N test pairs (default all)")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_grid_arguments(p, list(METHODS))
    p.add_argument("--epochs", type=int, default=None, help="override the presets' epochs")
    p.add_argument("--kl-weight", type=float, default=None, help="override SPLIT+KL's kl_weight")
    p.add_argument("--out", default="benchmarks/results/quality")
    p.add_argument("--figure", default="docs/quality_frontier.png", help="frontier figure ('' = none)")
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
    start = time.perf_counter()
    if method == "LoRA":
        intervention = train_peft_lora(model, tokenizer, train_pairs, config)
    else:
        intervention = train(model, tokenizer, train_pairs, config)
    seconds = time.perf_counter() - start
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


BLOWN_UP = 10.0  # a perplexity increase past +1000% is written as the factor: "x1312" reads, "131107.4%" does not


def fmt(mean: float, half: float, pct: bool = False, sig: bool = False) -> str:
    """mean ± 95% half-width; `pct`: a perplexity increase (a fraction) in %, or as a factor past
    +1000%; `sig`: three significant digits (relative strengths span 0.001 to 1)."""
    if not math.isfinite(mean):
        return "n/a"
    if pct and mean > BLOWN_UP:
        return f"x{1 + mean:,.0f} (perplexity multiplied; seeds vary)" if math.isfinite(half) and half > 0 \
            else f"x{1 + mean:,.0f} (perplexity multiplied)"
    if pct:
        text, spread = f"{mean * 100:.1f}%", f" ± {half * 100:.1f}%"
    elif sig:
        text, spread = f"{mean:.3g}", f" ± {half:.2g}"
    else:
        text, spread = f"{mean:.3f}", f" ± {half:.3f}"
    return text + spread if math.isfinite(half) else text


def runs(cells: list[Evaluation], concept: str, method: str) -> list[Evaluation]:
    return [c for c in cells if c.extra["concept"] == concept and c.name == method]


def stat(evals: list[Evaluation], pick: Callable[[Evaluation], float]) -> tuple[float, float]:
    """mean_ci of one number per cell."""
    return mean_ci([pick(e) for e in evals])


def at_m1(e: Evaluation) -> dict:
    return next(r for r in e.trained_rows() if r["multiplier"] == 1.0)


def top_trained(e: Evaluation) -> dict:
    return max(e.trained_rows(), key=lambda r: r["multiplier"])


def unsteered(cells: list[Evaluation]) -> float:
    """Mean test accuracy at m = 0 (the same model for every method of a concept)."""
    return float(np.mean([c.row(0.0)["accuracy"] for c in cells]))


def tables(cells: list[Evaluation], concepts: list[str], methods: list[str]) -> str:
    lines = []
    for concept in concepts:
        mine = [c for c in cells if c.extra["concept"] == concept]
        if not mine:
            continue
        x = mine[0].extra
        lines += [f"#### {concept} ({x['test_pairs']} test pairs, {x['validation_pairs']} validation pairs, "
                  f"{x['train_pairs']} training pairs; unsteered test accuracy {unsteered(mine):.3f})", "",
                  "| method | seeds | params | test acc @ ppl +2% | @ +5% | @ +10% | strength @ +5% | ppl there "
                  "| val acc @ m=1 | ppl @ top trained m | train s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for method in methods:
            evals = runs(cells, concept, method)
            if not evals:
                continue
            accs = [fmt(*stat(evals, lambda e, b=b: e.at_budget(b)["accuracy"])) for b in BUDGETS]
            lines.append(f"| {method} | {len(evals)} | {evals[0].params} | {' | '.join(accs)} | "
                         f"{fmt(*stat(evals, lambda e: e.at_budget(0.05)['strength']), sig=True)} | "
                         f"{fmt(*stat(evals, lambda e: e.at_budget(0.05)['ppl_increase']), pct=True)} | "
                         f"{fmt(*stat(evals, lambda e: at_m1(e)['val_accuracy']))} | "
                         f"{fmt(*stat(evals, lambda e: top_trained(e)['ppl_increase']), pct=True)} | "
                         f"{np.mean([e.train_seconds for e in evals]):.0f} |")
        lines.append("")
    return "\n".join(lines)


def reading(cells: list[Evaluation], concepts: list[str], methods: list[str]) -> str:
    """The three questions answered from the numbers above (computed, never typed)."""
    lines = ["**(a) Test accuracy within +5% held-out perplexity, strength chosen on validation** "
             "(mean ± 95% CI):", ""]
    split_like = [m for m in ("SPLIT", "SPLIT+KL", "SPLIT-lora", "SPLIT-local_weight") if m in methods]
    for concept in concepts:
        acc = {m: stat(runs(cells, concept, m), lambda e: e.at_budget(0.05)["accuracy"]) for m in methods}
        acc = {m: v for m, v in acc.items() if math.isfinite(v[0])}
        if acc:
            lines.append(f"- {concept}: " + ", ".join(f"{m} {fmt(*v)}" for m, v in acc.items()) + "."
                         + _split_verdict(acc, split_like))
    lines += ["", "**(b) Held-out perplexity change at the largest multiplier each method was trained at**:", ""]
    for concept in concepts:
        ppl = {m: stat(runs(cells, concept, m), lambda e: top_trained(e)["ppl_increase"]) for m in methods}
        ppl = {m: v for m, v in ppl.items() if math.isfinite(v[0])}
        if ppl:
            lines.append(f"- {concept}: " + ", ".join(f"{m} {fmt(*v, pct=True)}" for m, v in ppl.items()) + ".")
    if "LoRA" in methods and "SPLIT" in methods:
        header_at = len(lines)
        for concept in concepts:
            rows = [f"{m} {evals[0].params} parameters, accuracy "
                    f"{fmt(*stat(evals, lambda e: e.at_budget(0.05)['accuracy']))}"
                    for m in ("SPLIT", "SPLIT+KL", "LoRA", "SPLIT-lora") if (evals := runs(cells, concept, m))]
            if len(rows) > 1 and any(r.startswith("LoRA ") for r in rows):
                lines.append(f"- {concept}: " + "; ".join(rows) + ".")
        if len(lines) > header_at:
            lines[header_at:header_at] = ["", "**(c) Trainable parameters against test accuracy within +5%**:", ""]
    return "\n".join(lines) + "\n"


def _split_verdict(acc: dict, split_like: list[str]) -> str:
    """The best SPLIT variant against CAA and SFT: above in the mean, and do the intervals separate?"""
    best = max((m for m in split_like if m in acc), key=lambda m: acc[m][0], default=None)
    if best is None:
        return ""
    above = [m for m in ("CAA", "SFT") if m in acc and acc[best][0] > acc[m][0]]
    clear = [m for m in above if acc[best][0] - acc[best][1] > acc[m][0] + acc[m][1]]
    if not math.isfinite(acc[best][1]):
        spread = ", from one seed (no interval)" if above else ""
    else:
        spread = (f", with non-overlapping intervals against {', '.join(clear)}" if clear
                  else ", but the intervals overlap" if above else "")
    return f" Best SPLIT variant: {best}; above {', '.join(above) or 'neither CAA nor SFT'} in the mean{spread}."


# -- the frontier figure -----------------------------------------------------------------------------
def frontier_curves(cells: list[Evaluation], concepts: list[str], methods: list[str]) -> dict:
    """concept -> method -> mean test accuracy at each of FRONTIER_BUDGETS (validation choices)."""
    curves = {}
    for concept in concepts:
        per = {m: [float(np.mean([e.at_budget(b)["accuracy"] for e in evals])) for b in FRONTIER_BUDGETS]
               for m in methods if (evals := runs(cells, concept, m))}
        if per:
            curves[concept] = per
    return curves


def plot_frontier(curves: dict, paths: Sequence[tuple[Path, int]], dashed: Sequence[str] = ()) -> None:
    """Test accuracy against the perplexity budget, one panel per concept; PNGs written atomically."""
    from matplotlib.figure import Figure  # no pyplot: the Agg canvas, no global backend change

    if not curves:
        return
    fig = Figure(figsize=(5.2 * len(curves), 4))
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    budgets = [100 * b for b in FRONTIER_BUDGETS]
    for ax, (concept, per) in zip(axes, curves.items()):
        for i, (method, accs) in enumerate(per.items()):
            ax.plot(budgets, accs, "--" if method in dashed else "-", marker="o", ms=3, color=f"C{i % 10}",
                    drawstyle="steps-post", label=method)  # a choice at budget b holds until the next budget
        for b in BUDGETS:
            ax.axvline(100 * b, color="grey", lw=0.6, ls=":")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(0, budgets[-1])
        ax.set_xlabel("held-out perplexity budget (% increase)")
        ax.set_ylabel("test accuracy  P(pos) > P(neg)")
        ax.set_title(f"{concept}: strength chosen on validation")
        ax.legend(fontsize=7)
    fig.tight_layout()
    for path, dpi in paths:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)


def protocol_line() -> str:
    """How every method was evaluated, for the reports' headers."""
    return (f"Protocol (split_plugin/analysis/protocol.py): relative strengths |m·delta| / median residual norm "
            f"{RELATIVE_GRID[0]:g} to {RELATIVE_GRID[-1]:g} ({len(RELATIVE_GRID)} log-spaced points) plus the "
            f"multipliers each method was trained at; the strength per budget chosen on {VAL_PAIRS} validation "
            "pairs (the training split's last) as the most accurate m >= 0 within the held-out perplexity budget; "
            f"the test split scored at those strengths only; held-out text: first {HELDOUT_WORDS} words of the "
            "bundled prose.")


def header(args, cells: list[Evaluation]) -> str:
    seeds = sorted({c.extra["seed"] for c in cells})
    command = " ".join(["python benchmarks/quality.py", *map(shlex.quote, sys.argv[1:])])
    note = ("  \nCells: computed by the same command without `--cached-only` (it resumes per cell); "
            "the seeds column says how many finished, and a rerun fills in the rest.") if args.cached_only else ""
    return (f"Command: `{command}`{note}  \n"
            f"Date: {date.today().isoformat()}; machine: {os.cpu_count()} cores, {platform.machine()}; "
            f"torch {torch.__version__}; seeds {seeds}.  \n{protocol_line()}\n")


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = (None, None) if args.cached_only else load_default_model()
    text = load_heldout_text(words=HELDOUT_WORDS)
    # seed-major: an interrupted run still covers every concept and method with the seeds it got to
    grid = [(c, m, s) for s in args.seeds for c in args.concepts for m in args.methods]
    cells = collect(grid, cell_path(args, out),
                    lambda c, m, s: run_cell(model, tokenizer, c, m, s, args, text),
                    deterministic=("CAA",), cached_only=args.cached_only, desc="quality grid")
    figure = ""
    if args.figure and cells:
        plot_frontier(frontier_curves(cells, args.concepts, args.methods), [(Path(args.figure), 80)])
        figure = f"![test accuracy against the perplexity budget]({args.figure})\n\n"
    report = (header(args, cells) + "\n" + figure + tables(cells, args.concepts, args.methods) + "\n"
              + reading(cells, args.concepts, args.methods))
    print("\n" + report)
    if args.markdown:
        write_section(args.markdown, "quality", "Quality grid (benchmarks/quality.py)", report)
        print(f"written to {args.markdown}")


if __name__ == "__main__":
    main()
