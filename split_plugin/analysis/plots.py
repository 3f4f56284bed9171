"""Figures of sweeps (PNG, Agg): log-odds curves, the preference-utility frontier, distances.

Figures are built with `matplotlib.figure.Figure` (no pyplot, no global backend change), so
plotting never disturbs a user's interactive session. Every function takes results keyed by
method name; a method keeps its colour in every figure.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
from matplotlib.figure import Figure

from ..errors import SplitPluginError
from ..fileio import atomic_path
from .fits import FitResult
from .result import SweepResult

DPI = 120
PHASE_COLOURS = {"linear": "#d8f0d8", "transition": "#fff1c9", "convergence": "#f8d7d7"}
PREF_LABEL = "preference log-odds  log P(A+)/P(A-)  [nats]"
UTIL_LABEL = "utility log-odds  [nats]"
M_LABEL = "multiplier m  [unitless strength]"


def _colour(index: int) -> str:
    return f"C{index % 10}"


def _save(fig: Figure, path: str | Path) -> None:
    """Write the figure as PNG, atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")


def _check(results: Mapping) -> None:
    if not results:
        raise SplitPluginError("nothing to plot: pass at least one result keyed by method name")


def _band(ax, result: SweepResult, stat: str, colour: str, label: str, style: str = "-") -> None:
    """Mean of one statistic vs m with its 95% bootstrap CI band."""
    ms = result.multipliers
    ax.plot(ms, result.column(f"{stat}_mean"), style, marker="o", ms=3, color=colour, label=label)
    low, high = result.column(f"{stat}_mean_ci_low"), result.column(f"{stat}_mean_ci_high")
    if np.isfinite(low).any():
        ax.fill_between(ms, low, high, color=colour, alpha=0.18, linewidth=0)


def _fitted(ax, result: SweepResult, fit: FitResult | None, colours: tuple[str, str]) -> None:
    """Dashed fitted curves over the swept range, with R^2 in the legend."""
    if fit is None:
        return
    grid = np.linspace(result.multipliers.min(), result.multipliers.max(), 400)
    for curve, colour in zip((fit.preference, fit.utility), colours):
        if curve.params:
            flag = "" if curve.ok else ", flagged"
            ax.plot(grid, curve.predict(grid), "--", color=colour, linewidth=1,
                    label=f"{curve.kind} fit (R²={curve.r2:.3f}{flag})")


def _shade_phases(ax, fit: FitResult | None) -> None:
    """Background colour per preference phase (linear / transition / convergence)."""
    if fit is None:
        return
    labelled = set()
    for side in fit.phases.values():
        for name, colour in PHASE_COLOURS.items():
            span = side.get(name) if side else None
            if span and span[1] > span[0]:
                ax.axvspan(*span, color=colour, zorder=0,
                           label=None if name in labelled else f"{name} phase")
                labelled.add(name)


def _style(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def _method_panel(ax, name: str, result: SweepResult, fit: FitResult | None) -> None:
    """Pref (solid) and util (dotted) log-odds of one method, fits dashed, phases shaded."""
    _shade_phases(ax, fit)
    _band(ax, result, "pref", "C0", "preference (mean, 95% CI)")
    _band(ax, result, "util", "C3", "utility (mean over defined, 95% CI)", style=":")
    _fitted(ax, result, fit, ("C0", "C3"))
    _style(ax, f"{name}: log-odds vs m", M_LABEL, "log-odds [nats]")


def plot_sweep(result: SweepResult, path: str | Path, fit: FitResult | None = None,
               name: str | None = None) -> None:
    """One method: log-odds vs m (CI bands, optional fits and phases) and accuracy vs m."""
    fig = Figure(figsize=(11, 4.2))
    ax1, ax2 = fig.subplots(1, 2)
    _method_panel(ax1, name or _name(result), result, fit)
    _accuracy(ax2, result, "C2", "accuracy (95% CI)")
    ax2.set_ylim(-0.02, 1.02)
    _style(ax2, "accuracy: share of pairs with P(A+) > P(A-)", M_LABEL, "accuracy [fraction]")
    _save(fig, path)


def _name(result: SweepResult) -> str:
    meta = result.metadata
    return f"{meta.get('form', '?')} @ layer {meta.get('layer', '?')}"


def _accuracy(ax, result: SweepResult, colour: str, label: str) -> None:
    """Accuracy vs m with its bootstrap CI band."""
    ms = result.multipliers
    ax.plot(ms, result.column("accuracy"), marker="o", ms=3, color=colour, label=label)
    low, high = result.column("accuracy_ci_low"), result.column("accuracy_ci_high")
    if np.isfinite(low).any():
        ax.fill_between(ms, low, high, color=colour, alpha=0.18, linewidth=0)


def plot_log_odds(results: Mapping[str, SweepResult], path: str | Path,
                  fits: Mapping[str, FitResult] | None = None) -> None:
    """One panel per method (fits, phases) and an overlay panel with all methods on shared axes."""
    _check(results)
    fits = fits or {}
    n = len(results) + 1
    cols = min(3, n)
    rows = -(-n // cols)
    fig = Figure(figsize=(5.2 * cols, 4.2 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, (name, result) in zip(axes, results.items()):
        _method_panel(ax, name, result, fits.get(name))
    overlay = axes[len(results)]
    for i, (name, result) in enumerate(results.items()):
        _band(overlay, result, "pref", _colour(i), f"{name} preference")
        _band(overlay, result, "util", _colour(i), f"{name} utility", style=":")
    _style(overlay, "all methods (solid: preference, dotted: utility)", M_LABEL, "log-odds [nats]")
    for ax in axes[n:]:
        ax.set_visible(False)
    _save(fig, path)


def plot_frontier(results: Mapping[str, SweepResult], path: str | Path) -> None:
    """Utility vs preference log-odds, one line per method, points labelled with m."""
    _check(results)
    fig = Figure(figsize=(7.5, 5.5))
    ax = fig.subplots()
    for i, (name, result) in enumerate(results.items()):
        x, y = result.column("pref_mean"), result.column("util_mean")
        ax.plot(x, y, marker="o", ms=4, color=_colour(i), label=name)
        for m, xi, yi in zip(result.multipliers, x, y):
            if np.isfinite(xi) and np.isfinite(yi):
                ax.annotate(f"{m:.3g}", (xi, yi), textcoords="offset points", xytext=(3, 3),
                            fontsize=7, color=_colour(i))
    _style(ax, "preference-utility frontier (up and right is better; labels: m)", PREF_LABEL, UTIL_LABEL)
    _save(fig, path)


def plot_off_manifold(manifolds: Mapping, path: str | Path, key: str = "off_subspace_excess",
                      layer: int | None = None) -> None:
    """Off-manifold distance (median, in units of the median residual norm) vs m per method."""
    _check(manifolds)
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    for i, (name, report) in enumerate(manifolds.items()):
        ms, values = report.series(key, layer)
        ax.plot(ms, values, marker="o", ms=3, color=_colour(i), label=name)
    where = f"layer {layer}" if layer is not None else "the intervention's layer"
    _style(ax, f"off-manifold distance at {where} ({key})", M_LABEL,
           "median distance / median residual norm [ratio]")
    _save(fig, path)


def plot_accuracy_perplexity(results: Mapping[str, SweepResult], path: str | Path) -> None:
    """Accuracy vs m and held-out perplexity increase (%) vs m, one line per method."""
    _check(results)
    fig = Figure(figsize=(11, 4.2))
    ax1, ax2 = fig.subplots(1, 2)
    for i, (name, result) in enumerate(results.items()):
        _accuracy(ax1, result, _colour(i), name)
        ax2.plot(result.multipliers, 100 * result.column("ppl_increase"), marker="o", ms=3,
                 color=_colour(i), label=name)
    ax1.set_ylim(-0.02, 1.02)
    _style(ax1, "accuracy (95% CI)", M_LABEL, "accuracy [fraction of pairs]")
    _style(ax2, "held-out perplexity increase vs m = 0", M_LABEL, "perplexity increase [%]")
    _save(fig, path)


def plot_protocol(evaluations: Mapping, path: str | Path, test: str = "test") -> None:
    """Two panels per the protocol: validation accuracy vs relative edit strength (trained points
    ringed), and test accuracy at the strength chosen on validation vs the perplexity budget."""
    _check(evaluations)
    fig = Figure(figsize=(12, 4.8))
    left, right = fig.subplots(1, 2)
    for i, (name, ev) in enumerate(evaluations.items()):
        points = [p for p in ev.points if p.multiplier > 0]
        by_m = {r["multiplier"]: r for r in ev.validation.summary()}
        left.plot([p.strength for p in points], [by_m[p.multiplier]["accuracy"] for p in points],
                  marker=".", color=_colour(i), label=name)
        trained = [p for p in points if p.source == "trained"]
        left.scatter([p.strength for p in trained], [by_m[p.multiplier]["accuracy"] for p in trained],
                     s=60, facecolors="none", edgecolors=_colour(i))
        rows = ev.frontier(test)
        right.plot([100 * r["budget"] for r in rows], [r["accuracy"] for r in rows], marker="o",
                   color=_colour(i), label=name)
    left.set_xscale("log")
    _style(left, "validation pairs (rings: trained multipliers)", "relative edit strength |m·delta| / median |h|",
           "accuracy")
    right.set_xscale("symlog", linthresh=1.0)
    _style(right, f"{test} pairs, strength chosen on validation", "held-out perplexity budget [%]", "accuracy")
    _save(fig, path)
