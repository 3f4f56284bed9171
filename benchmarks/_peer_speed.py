"""Training speed of ours against the peers, timed side by side in one process.

The grid's cells carry their own training seconds, but ours come from quality.py's cache and
the peers' from another run, often on another day, so their ratio mixes machine states. Here
every method trains on the same pairs, in alternating order, `repeats` times after one untimed
warm-up each, and the medians are compared: a slow spell of the machine hits every method.
Each run gets a freshly loaded model (pyvene clears the forward hooks of the model it wraps);
loading is not timed.
"""
from __future__ import annotations

import statistics
import time
from types import SimpleNamespace
from typing import Callable

import _cells
from _peer_methods import LAYER, train_pyreft

from split_plugin import load_default_model

SPEED_METHODS = ("SPLIT", "SPLIT-tuned", "SPLIT-lora", "pyreft-NoReFT", "pyreft-LoReFT")
WARMUP_PAIRS = 8


def trainer(method: str, seed: int, qargs, reft: SimpleNamespace) -> tuple[Callable, int]:
    """(train(model, tokenizer, pairs) for `method`, the epochs it trains)."""
    if method.startswith("pyreft-"):
        kind = method.split("-", 1)[1]

        def run_reft(model, tokenizer, pairs):
            train_pyreft(model, tokenizer, pairs, LAYER, kind, seed, rank=reft.rank, epochs=reft.epochs,
                         lr=reft.lr, batch_size=reft.batch_size)
        return run_reft, reft.epochs
    config = _cells.cell_config(method, seed, qargs)

    def run_ours(model, tokenizer, pairs):
        _cells.train_timed(model, tokenizer, pairs, config, peft_lora=method == "LoRA")
    return run_ours, config.epochs


def _timed(run: Callable, pairs) -> float:
    model, tokenizer = load_default_model()
    start = time.perf_counter()
    run(model, tokenizer, pairs)
    return time.perf_counter() - start


def measure(methods, pairs, seed: int, qargs, reft, repeats: int, log=print) -> dict[str, dict]:
    """{method: {seconds: [per run], median, epochs, pairs_per_s}}, runs alternating between methods."""
    runs = {m: trainer(m, seed, qargs, reft) for m in methods}
    for method, (run, _) in runs.items():
        _timed(run, pairs[:WARMUP_PAIRS])
        log(f"  warm-up {method} done")
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(repeats):
        order = list(methods) if r % 2 == 0 else list(reversed(methods))
        for method in order:
            seconds[method].append(_timed(runs[method][0], pairs))
            log(f"  run {r + 1}/{repeats} {method}: {seconds[method][-1]:.1f} s")
    return {m: {"seconds": s, "median": statistics.median(s), "epochs": runs[m][1],
                "pairs_per_s": len(pairs) / statistics.median(s)} for m, s in seconds.items()}


def answer_tokens(tokenizer, pairs) -> tuple[float, float]:
    """Mean token counts of the positive and the negative answers: ours trains on both, pyreft on the first."""
    def mean(texts):
        return statistics.mean(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return mean(p.positive for p in pairs), mean(p.negative for p in pairs)


def report(stats: dict[str, dict], n_pairs: int, concept: str, seed: int, repeats: int,
           tokens: tuple[float, float] | None = None) -> str:
    """The table and the ratio lines of ours over each pyreft method (pairs/s, > 1 = ours faster)."""
    answers = f" (answers: {tokens[0]:.1f} positive, {tokens[1]:.1f} negative tokens on average)" if tokens else ""
    lines = [f"{n_pairs} {concept} training pairs{answers}, seed {seed}; median of {repeats} alternating runs "
             f"per method (one untimed {WARMUP_PAIRS}-pair warm-up each); pairs/s = training pairs / training "
             "seconds, as in the grid's tables.", "",
             "| method | epochs | median s | runs (s) | pairs/s | pair-epochs/s |", "|---|---|---|---|---|---|"]
    for m, s in stats.items():
        runs = ", ".join(f"{x:.1f}" for x in s["seconds"])
        lines.append(f"| {m} | {s['epochs']} | {s['median']:.1f} | {runs} | {s['pairs_per_s']:.2f} | "
                     f"{s['pairs_per_s'] * s['epochs']:.2f} |")
    peers = [m for m in stats if m.startswith("pyreft-")]
    ours = [m for m in stats if m not in peers]
    if peers and ours:
        lines.append("")
        for o in ours:
            ratios = ", ".join(f"{stats[o]['pairs_per_s'] / stats[p]['pairs_per_s']:.2f}x {p}" for p in peers)
            lines.append(f"- {o} pairs/s over {ratios}")
    return "\n".join(lines)
