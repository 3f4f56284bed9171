"""Sweeps over the multiplier, the paper's curve fits, manifold diagnostics, plots and reports.

    result = sweep(model, tokenizer, intervention, pairs, [-8, -4, 0, 4, 8], heldout_text=True)
    result.summary(); result.fit(); result.plot("sweep.png")
    write_report({"SPLIT": result, "CAA": other}, "reports/sweep")
"""
from .fits import CurveFit, FitResult, decay, detect_phases, fit_curve, fit_curves
from .manifold import (ManifoldReport, ReferenceCloud, concept_direction, correlate, correlate_reports,
                       manifold_report, utility_drop)
from .plots import plot_accuracy_perplexity, plot_frontier, plot_log_odds, plot_off_manifold, plot_sweep
from .report import verdict, write_report
from .result import SweepResult
from .stats import summarize
from .sweep import sweep

__all__ = [
    "CurveFit",
    "FitResult",
    "ManifoldReport",
    "ReferenceCloud",
    "SweepResult",
    "concept_direction",
    "correlate",
    "correlate_reports",
    "decay",
    "detect_phases",
    "fit_curve",
    "fit_curves",
    "manifold_report",
    "plot_accuracy_perplexity",
    "plot_frontier",
    "plot_log_odds",
    "plot_off_manifold",
    "plot_sweep",
    "summarize",
    "sweep",
    "utility_drop",
    "verdict",
    "write_report",
]
