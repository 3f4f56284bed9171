"""The peers grid's report: per-method summaries over seeds, the sentences read from them, the
tables, and the BENCHMARKS.md section."""
from __future__ import annotations

import math
import os
import platform
import shlex
from datetime import date
from pathlib import Path

import numpy as np
from _cells import protocol_line, unsteered
from _intervals import fmt as fmt_interval
from _intervals import stat
from _markdown import write_section
from _peer_methods import INSTALL, LAYER, PEERS, peer_versions

from split_plugin.analysis.protocol import BUDGETS, Evaluation


OURS = ("CAA", "SFT", "SPLIT", "SPLIT-tuned", "SPLIT-lora", "SPLIT-local_weight")
METHODS = PEERS + OURS
DETERMINISTIC = ("steering-vectors", "repeng", "CAA")  # no randomness: one run serves every seed
GLOSSARY = [
    "Methods: **SPLIT** / **SFT** / **CAA** are ours in the vector form (one vector added at layer 15); "
    "**SPLIT-lora** is the SPLIT objective trained as a low-rank update of the layer's down projection; "
    "**LoRA** (quality grid only) is plain peft LoRA fine-tuning on the positive answers. Every method is "
    "evaluated under the same protocol: the relative-strength grid plus the multipliers it was trained at, "
    "the strength per budget chosen on validation pairs. Seeds: trained methods run once per seed; the "
    "deterministic ones (" + ", ".join(DETERMINISTIC) + ") run once and count for every seed, hence their "
    "± 0.000. A seeds count below 3 means the remaining cells have not been computed yet (a rerun fills them in).",
]


def our_sequences(cell: Evaluation) -> int:
    """Answer rows our trainer runs: 2 per pair with the negative answer, x2 with sub rows, x epochs."""
    c, n = cell.extra["config"], cell.extra["train_pairs"]
    if c.get("method") == "caa":
        return 2 * n
    needs_negative = c.get("method") == "reps" or c.get("neg_weight", 0) > 0 or c.get("margin_weight", 0) > 0
    per_pair = (2 if needs_negative else 1) * (2 if c.get("sub_rows") else 1)
    return per_pair * n * int(c.get("epochs", 1))


# -- aggregation -------------------------------------------------------------------------------------
def summarize(cells: list[Evaluation], methods: list[str]) -> dict:
    """Per method: test accuracy at each budget (validation choice), the +5% choice, speed, the frontier."""
    out = {}
    for method in methods:
        runs = [c for c in cells if c.name == method]
        if not runs:
            continue
        seqs = [c.extra.get("train_sequences") or our_sequences(c) for c in runs]
        edits = [c.extra["median_edit_norm"] for c in runs if "median_edit_norm" in c.extra]
        out[method] = {
            "n": len(runs), "params": runs[0].params,
            "collapsed": all(c.extra.get("collapsed") for c in runs),
            "at_budget": {b: stat(runs, lambda e, b=b: e.at_budget(b)["accuracy"]) for b in BUDGETS},
            "val_at_budget": {b: stat(runs, lambda e, b=b: e.at_budget(b)["val_accuracy"])[0] for b in BUDGETS},
            "strength": stat(runs, lambda e: e.at_budget(0.05)["strength"]),
            "ppl": stat(runs, lambda e: e.at_budget(0.05)["ppl_increase"]),
            "pairs_per_s": float(np.mean([c.extra["train_pairs"] / c.train_seconds for c in runs])),
            "seqs_per_s": float(np.mean([s / c.train_seconds for s, c in zip(seqs, runs)])),
            "seconds": float(np.mean([c.train_seconds for c in runs])),
            "edit": float(np.median(edits)) if edits else None,
        }
    return out


def reading(stats: dict, baseline: float) -> list[str]:
    """Sentences computed from the numbers: who leads at each budget, by how much, and speed."""
    ours = [m for m in stats if m in OURS]
    peers = [m for m in stats if m in PEERS and not stats[m]["collapsed"]]
    lines = []
    if not ours or not peers:
        return ["Only one side (ours or peers) was run, so there is nothing to compare."]
    for b in BUDGETS:
        best_our, best_peer = best_at(stats, ours, b), best_at(stats, peers, b)
        (mo, ho), (mp, hp) = stats[best_our]["at_budget"][b], stats[best_peer]["at_budget"][b]
        gap = mo - mp
        overlap = (math.isfinite(ho) and math.isfinite(hp) and abs(gap) <= ho + hp)
        if abs(gap) < 1e-9:
            verdict = "tie"
        elif gap > 0:
            verdict = "we lead" + (" (intervals overlap)" if overlap else "")
        else:
            verdict = "the peer leads" + (" (intervals overlap)" if overlap else "")
        lines.append(f"- Within +{b:.0%} perplexity (each side's best on validation): ours {best_our} {mo:.3f}, "
                     f"peer {best_peer} {mp:.3f} (unsteered {baseline:.3f}): {verdict}, gap {gap:+.3f}.")
    best_split = best_at(stats, [m for m in ours if m.startswith("SPLIT")], 0.05)
    if best_split:
        best_peer = best_at(stats, peers, 0.05)
        (ms, hs), (mp, hp) = stats[best_split]["at_budget"][0.05], stats[best_peer]["at_budget"][0.05]
        overlap = math.isfinite(hs) and math.isfinite(hp) and abs(ms - mp) <= hs + hp
        lines.append(f"- SPLIT (best form: {best_split}, {ms:.3f}) {'beats' if ms > mp else 'does not beat'} "
                     f"every peer's test accuracy within +5% perplexity ({best_peer}, {mp:.3f})"
                     + (", but the 95% intervals overlap." if overlap else "."))
    if all(stats[m]["n"] < 2 for m in stats):
        lines.append("- One seed only: no intervals, so gaps of a few test pairs are within noise.")
    collapsed = [m for m in stats if stats[m]["collapsed"]]
    if collapsed:
        lines.append(f"- {', '.join(collapsed)}: collapsed in training (zero edit), shown at the unsteered accuracy.")
    fastest = max(stats, key=lambda m: stats[m]["pairs_per_s"])
    slowest = min(stats, key=lambda m: stats[m]["pairs_per_s"])
    lines.append(f"- Speed: fastest {fastest} ({stats[fastest]['pairs_per_s']:.1f} pairs/s), slowest {slowest} "
                 f"({stats[slowest]['pairs_per_s']:.2f} pairs/s).")
    if any(p.startswith("pyreft") for p in stats) and any(m != "CAA" for m in ours):
        lines.append("- Speed per pair and per training sequence differ (see the ratio table): pyreft trains one "
                     "row per pair and epoch, the positive answer; ours adds sub rows, and for SPLIT the negative "
                     "answers.")
    return lines


def best_at(stats: dict, methods: list[str], budget: float) -> str | None:
    """The method with the highest mean validation accuracy at the budget (first on ties): the test split picks nothing."""
    return max(methods, key=lambda m: stats[m]["val_at_budget"][budget]) if methods else None


def speed_ratios(stats: dict, ours: str, peer: str) -> tuple[float, float]:
    """(pairs/s ratio, training sequences/s ratio) of one of our methods over a peer."""
    return (stats[ours]["pairs_per_s"] / stats[peer]["pairs_per_s"],
            stats[ours]["seqs_per_s"] / stats[peer]["seqs_per_s"])


def fmt(pair, pct=False, sig=False) -> str:
    return fmt_interval(*pair, pct=pct, sig=sig)


def method_rows(stats: dict, methods: list[str]) -> list[str]:
    """The per-concept table: test accuracy per budget, the +5% choice, speed."""
    lines = ["| method | params | test acc @ ppl +2% | @ +5% | @ +10% | strength @ +5% | ppl there | train s "
             "| pairs/s | seq/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for method in (m for m in methods if m in stats):
        s = stats[method]
        accs = " | ".join("collapsed" if s["collapsed"] else fmt(s["at_budget"][b]) for b in BUDGETS)
        lines.append(f"| {method} | {s['params']} | {accs} | {fmt(s['strength'], sig=True)} | "
                     f"{fmt(s['ppl'], pct=True)} | {s['seconds']:.1f} | {s['pairs_per_s']:.2f} | "
                     f"{s['seqs_per_s']:.2f} |")
    return lines


def report(args, cells: list[Evaluation], methods: list[str], argv: list[str]) -> tuple[str, dict]:
    versions = peer_versions()
    # the command that computes the cells (a --cached-only rerun only re-reads them)
    command = " ".join(["python benchmarks/peers.py", *map(shlex.quote, [a for a in argv if a != "--cached-only"])])
    header = [f"Command: `{command}`  ",
              f"Date: {date.today().isoformat()}; machine: {os.cpu_count()} cores, {platform.machine()}; "
              + ", ".join(f"{k} {v}" for k, v in versions.items() if v) + ".  ",
              f"Model: embedded SmolLM2-135M-Instruct, layer {LAYER}. {protocol_line()} pyreft's "
              f"strengths use the median of its input-dependent edit. Install: `{INSTALL}`.", "", *GLOSSARY, ""]
    all_stats = {concept: summarize(mine, methods) for concept in args.concepts
                 if (mine := [c for c in cells if c.extra["concept"] == concept])}
    lines = ["#### Per concept", ""]
    for concept, stats in all_stats.items():
        mine = [c for c in cells if c.extra["concept"] == concept]
        base, x = unsteered(mine), mine[0].extra
        seeds = sorted({c.extra["seed"] for c in mine})
        lines += [f"##### {concept} ({x['test_pairs']} test pairs, {x['validation_pairs']} validation pairs, "
                  f"{x['train_pairs']} training pairs, seeds {seeds}; unsteered test accuracy {base:.3f})", "",
                  "Test accuracy within a held-out perplexity increase, at the strength chosen on the validation "
                  "pairs (mean ± 95% CI over seeds), the relative strength chosen for +5% and its perplexity "
                  "change, and training/extraction speed:", "", *method_rows(stats, methods)]
        edits = [f"{m} {stats[m]['edit']:.3g}" for m in stats if stats[m]["edit"] is not None]
        if edits:
            lines += ["", "pyreft median edit norm at m = 1 on held-out tokens: " + ", ".join(edits) + "."]
        ours = [m for m in stats if m in OURS]
        peers = [m for m in stats if m in PEERS]
        if ours and peers:
            lines += ["", "Speed, ours over each peer as ratios of pairs/s and of training sequences/s "
                      "(> 1 = ours faster; each cell timed in its own run, ours possibly in quality.py's: "
                      "the side-by-side section below times them in one process):", "",
                      "| ours \\ peer | " + " | ".join(peers) + " |", "|---" * (len(peers) + 1) + "|"]
            for m in ours:
                lines.append(f"| {m} | " + " | ".join(f"{speed_ratios(stats, m, p)[0]:.2f} pairs, "
                                                       f"{speed_ratios(stats, m, p)[1]:.2f} seq" for p in peers) + " |")
        lines += ["", "Reading (generated from the numbers above):", "", *reading(stats, base), ""]
    # the answer first (summary, verdict, plot), then what was run and the per-concept detail
    return "\n".join(summary(all_stats) + ["{plot}", ""] + header + lines), all_stats


def summary(all_stats: dict) -> list[str]:
    """One row per concept: SPLIT's best form against the best peer within +5% perplexity, and a verdict."""
    rows, gaps = [], []
    for concept, stats in all_stats.items():
        best_split = best_at(stats, [m for m in stats if m.startswith("SPLIT")], 0.05)
        best_peer = best_at(stats, [m for m in stats if m in PEERS and not stats[m]["collapsed"]], 0.05)
        if not best_split or not best_peer:
            continue
        gap = stats[best_split]["at_budget"][0.05][0] - stats[best_peer]["at_budget"][0.05][0]
        gaps.append(gap)
        rows.append(f"| {concept} | {best_split} {fmt(stats[best_split]['at_budget'][0.05])} | "
                    f"{best_peer} {fmt(stats[best_peer]['at_budget'][0.05])} | {gap:+.3f} |")
    if not rows:
        return []
    verdict = ("SPLIT trails the best peer on at least one concept" if min(gaps) < 0
               else "SPLIT matches or leads the best peer on every concept")
    return ["#### Summary: SPLIT (best form) against the best peer, test accuracy within +5% perplexity "
            "(form, peer and strength all chosen on validation)", "",
            "| concept | SPLIT | best peer | gap |", "|---|---|---|---|", *rows, "",
            f"{verdict}; a gap smaller than the intervals (± 95% CI over seeds) is a tie, not a lead.", ""]


def write_markdown(path: Path, text: str) -> None:
    """Replace only the peers section of the file (appended with a heading if missing)."""
    write_section(path, "peers", "Peers: steering-vectors, repeng, pyreft (benchmarks/peers.py)", text)
