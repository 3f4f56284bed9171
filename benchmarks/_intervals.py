"""Means over seeds with 95% t-intervals, and how the reports write them."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from split_plugin.analysis.protocol import Evaluation


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


def stat(evals: list[Evaluation], pick: Callable[[Evaluation], float]) -> tuple[float, float]:
    """mean_ci of one number per cell."""
    return mean_ci([pick(e) for e in evals])
