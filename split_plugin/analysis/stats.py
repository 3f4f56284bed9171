"""Per-multiplier statistics of a sweep: log-odds, accuracy, bootstrap 95% CIs, perplexity.

Everything here works on plain numpy arrays shaped [multipliers, pairs], so a sweep's table
can be summarised again (e.g. after loading it from JSON) without a model.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch

from ..errors import SplitPluginError
from ..objectives import preference_log_odds, utility_log_odds

CI_LEVEL = 0.95


def check_multipliers(multipliers: Sequence[float] | np.ndarray | torch.Tensor) -> list[float]:
    """Sorted unique finite multipliers, with 0 added (perplexity increase is relative to m = 0)."""
    if isinstance(multipliers, (int, float)):
        raise SplitPluginError(f"multipliers must be a list of numbers, got the single number {multipliers!r}; "
                               f"pass [{multipliers!r}]")
    try:
        values = [float(m) for m in multipliers]
    except (TypeError, ValueError):
        raise SplitPluginError(f"multipliers must be numbers, got {multipliers!r}") from None
    if not values:
        raise SplitPluginError("the multipliers list is empty; pass at least one strength, e.g. [-4, 0, 4]")
    bad = [m for m in values if not np.isfinite(m)]
    if bad:
        raise SplitPluginError(f"multipliers must be finite numbers, got {bad}; remove NaN/inf values")
    return sorted(set(values) | {0.0})


def log_odds(logp_pos: np.ndarray, logp_neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(PrefOdds, UtilOdds) from sequence log-prob sums; UtilOdds is NaN where undefined."""
    pos, neg = torch.as_tensor(np.asarray(logp_pos, dtype=np.float64)), torch.as_tensor(
        np.asarray(logp_neg, dtype=np.float64))
    return preference_log_odds(pos, neg).numpy(), utility_log_odds(pos, neg).numpy()


def _percentile_ci(samples: np.ndarray) -> tuple[float, float]:
    """The central CI_LEVEL interval of bootstrap samples (NaN samples ignored)."""
    tail = 100 * (1 - CI_LEVEL) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if np.all(np.isnan(samples)):
            return float("nan"), float("nan")
        low, high = np.nanpercentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_ci(values: np.ndarray, index: np.ndarray | None) -> dict[str, tuple[float, float]]:
    """Bootstrap CIs of the mean and median of `values` over resampled pairs; NaNs are left out.

    `index` is [resamples, n] (the same resampling is shared by all statistics of one
    multiplier); None gives NaN intervals.
    """
    if index is None or values.size == 0:
        nan = (float("nan"), float("nan"))
        return {"mean": nan, "median": nan}
    draws = values[index]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        means, medians = np.nanmean(draws, axis=1), np.nanmedian(draws, axis=1)
    return {"mean": _percentile_ci(means), "median": _percentile_ci(medians)}


def _centre(values: np.ndarray) -> tuple[float, float]:
    """(mean, median) over the finite values; NaN when there are none."""
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    return float(finite.mean()), float(np.median(finite))


def _describe(prefix: str, values: np.ndarray, index: np.ndarray | None) -> dict[str, float]:
    """mean, median and their CIs of one statistic, as flat summary keys."""
    mean, median = _centre(values)
    ci = bootstrap_ci(values, index)
    return {f"{prefix}_mean": mean, f"{prefix}_mean_ci_low": ci["mean"][0],
            f"{prefix}_mean_ci_high": ci["mean"][1], f"{prefix}_median": median,
            f"{prefix}_median_ci_low": ci["median"][0], f"{prefix}_median_ci_high": ci["median"][1]}


def summarize(multipliers: Sequence[float], pref: np.ndarray, util: np.ndarray,
              perplexity: Sequence[float] | None = None, bootstrap: int = 1000,
              seed: int = 0) -> list[dict]:
    """One summary dict per multiplier from [M, N] PrefOdds / UtilOdds arrays.

    Accuracy is the share of pairs with PrefOdds > 0 (log p_pos > log p_neg). UtilOdds means
    and medians are over the defined pairs only; `util_undefined` counts the others. CIs are
    percentile bootstrap intervals over pairs (`bootstrap` resamples, 0 = none).
    """
    pref, util = np.asarray(pref, dtype=np.float64), np.asarray(util, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n = pref.shape[1]
    ppl0 = _baseline(multipliers, perplexity)
    rows = []
    for i, m in enumerate(multipliers):
        index = rng.integers(0, n, size=(bootstrap, n)) if bootstrap > 0 else None
        correct = (pref[i] > 0).astype(np.float64)
        acc_ci = bootstrap_ci(correct, index)["mean"]
        undefined = int(np.isnan(util[i]).sum())
        row = {"multiplier": float(m), "n_pairs": n, "accuracy": float(correct.mean()),
               "accuracy_ci_low": acc_ci[0], "accuracy_ci_high": acc_ci[1],
               **_describe("pref", pref[i], index), **_describe("util", util[i], index),
               "util_defined": n - undefined, "util_undefined": undefined}
        ppl = float(perplexity[i]) if perplexity is not None else float("nan")
        row["perplexity"] = ppl
        row["ppl_increase"] = ppl / ppl0 - 1 if np.isfinite(ppl0) else float("nan")
        rows.append(row)
    return rows


def _baseline(multipliers: Sequence[float], perplexity: Sequence[float] | None) -> float:
    """Perplexity at m = 0, or NaN when perplexity was not measured."""
    if perplexity is None or 0.0 not in list(multipliers):
        return float("nan")
    return float(perplexity[list(multipliers).index(0.0)])
