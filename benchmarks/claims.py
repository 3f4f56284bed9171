"""The paper's claims, each with the verdict measured on the embedded model from the quality grid.

    python benchmarks/quality.py ...            # first: computes the cells
    python benchmarks/claims.py [same grid flags as quality.py] [--markdown BENCHMARKS.md]

Reads the quality grid's cells (nothing is trained; missing cells are left out and the seeds
column says how many there were) and writes the "claims" section: for every concept, the
numbers behind each claim with 95% t-intervals over seeds, and a verdict computed from them.
Accuracies are test accuracies at the strength chosen on validation pairs (the protocol). Where a
claim is about "the best SPLIT form" or "the learned vector", the variant is the one with the
highest validation accuracy at that choice: the test split picks nothing.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (its command line: claims reads the cells of the same grid)
from _cells import SPLIT_VARIANTS, best_on_validation, cell_path, collect, runs, top_trained  # noqa: E402
from _intervals import fmt, mean_ci, stat  # noqa: E402
from _markdown import command, publish  # noqa: E402

from split_plugin.analysis.protocol import Evaluation  # noqa: E402

BUDGET = 0.05
CLAIMED_GAIN = 0.08  # "learned vectors beat contrastive-pair vectors by 8-12 points"
SPLIT_VECTORS = ("SPLIT", "SPLIT-tuned", "SPLIT+KL")  # the learned vectors the contrastive-vector claim is about


def acc(e: Evaluation) -> float:
    return e.at_budget(BUDGET)["accuracy"]


def ppl_at_strength(e: Evaluation, strength: float) -> float:
    """Held-out perplexity increase at a relative strength, interpolated in log-strength."""
    rows = sorted((e.point(r["multiplier"]).strength, r["ppl_increase"]) for r in e.validation.summary()
                  if r["multiplier"] > 0)
    s, p = np.log([r[0] for r in rows]), np.array([r[1] for r in rows])
    return float(np.interp(np.log(strength), s, p))


def paired(cells, concept: str, a: str, b: str, pick) -> tuple[float, float, int]:
    """mean ± CI over seeds of pick(a) - pick(b), cells matched by seed."""
    by_seed = {(c.name, c.extra["seed"]): c for c in cells if c.extra["concept"] == concept}
    diffs = [pick(by_seed[(a, s)]) - pick(by_seed[(b, s)]) for (name, s) in by_seed if name == a and (b, s) in by_seed]
    return (*mean_ci(diffs), len(diffs))


def verdict(ok: bool | None) -> str:
    return {True: "holds", False: "does not hold", None: "not measured"}[ok]


def claim_lines(cells, concept: str) -> list[str]:
    f = fmt
    lines, best = [f"##### {concept}", ""], best_on_validation(cells, concept, SPLIT_VARIANTS, BUDGET)
    if best is None:
        return lines + ["No SPLIT cells yet.", ""]
    top = stat(runs(cells, concept, best), lambda e: top_trained(e)["ppl_increase"])
    lines.append(f"- **SPLIT stays within +5% perplexity at its largest trained strength** ({best}, the "
                 f"best SPLIT form here): {f(*top, pct=True)} → {verdict(top[0] <= BUDGET)}.")
    if runs(cells, concept, "CAA"):
        strong = lambda e: top_trained(e)["strength"]  # noqa: E731
        caa = {c.extra["seed"]: c for c in runs(cells, concept, "CAA")}
        naive = mean_ci([ppl_at_strength(caa[e.extra["seed"]], strong(e))
                                 for e in runs(cells, concept, best) if e.extra["seed"] in caa])
        lines.append(f"- **Naive steering breaks perplexity where SPLIT does not**: CAA at the same relative "
                     f"strength as {best}'s largest trained multiplier: {f(*naive, pct=True)}, against "
                     f"{f(*top, pct=True)} → {verdict(naive[0] > top[0])} (paper: +40% vs < 5%).")
    vector = best_on_validation(cells, concept, SPLIT_VECTORS, BUDGET)
    if vector and runs(cells, concept, "CAA"):
        gain, half, n = paired(cells, concept, vector, "CAA", acc)
        lines.append(f"- **Learned vectors beat contrastive ones by 8-12 points** ({vector} vector − CAA, test "
                     f"accuracy within +5%, {n} seeds): {f(gain, half)} → {verdict(gain >= CLAIMED_GAIN)}.")
    lora = runs(cells, concept, "LoRA")
    small = [m for m in SPLIT_VARIANTS if runs(cells, concept, m) and lora
             and 3 * runs(cells, concept, m)[0].params <= lora[0].params]
    if small:
        m = best_on_validation(cells, concept, small, BUDGET)
        gap, half, n = paired(cells, concept, m, "LoRA", acc)
        lines.append(f"- **SPLIT matches LoRA with 3x fewer parameters** ({m}, {runs(cells, concept, m)[0].params} "
                     f"vs {lora[0].params} parameters; accuracy difference within +5%, {n} seeds): {f(gap, half)} → "
                     f"{verdict(gap + (half if np.isfinite(half) else 0) >= 0)} (holds = the interval reaches 0 or above).")
    r2 = [e.validation.fit() for e in runs(cells, concept, best)]
    pref = [fit.preference.r2 for fit in r2]
    phases = sum(all((fit.phases.get("positive") or {}).get(k) for k in ("linear", "transition", "convergence"))
                 for fit in r2)
    fitted = [v for v in pref if np.isfinite(v)]
    lines.append(f"- **Three phases, fits with R² > 0.95** ({best}, validation sweeps, m ≥ 0): preference R² "
                 f"{f(*mean_ci(pref))}; all three phases found in {phases} of {len(r2)} sweeps → "
                 f"{verdict(min(fitted) > 0.95 and phases == len(r2) if fitted else None)}.")
    return lines + [""]


def main(argv=None) -> None:
    args = quality.parse_args(argv)
    args.cached_only = True
    out = Path(args.out)
    grid = [(c, m, s) for s in args.seeds for c in args.concepts for m in args.methods]
    cells = collect(grid, cell_path(args, out), None, deterministic=("CAA",), cached_only=True,
                            desc="claims")
    lines = [f"Command: `{command('claims.py', argv)}` "
             f"(reads the quality grid's cells; {len(cells)} found). Test accuracy at the strength chosen on "
             "validation within +5% held-out perplexity; means ± 95% t-intervals over seeds.", ""]
    for concept in args.concepts:
        lines += claim_lines(cells, concept)
    publish("\n".join(lines), args.markdown, "claims", "Claims (benchmarks/claims.py)")


if __name__ == "__main__":
    main()
