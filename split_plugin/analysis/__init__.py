"""Sweeps over the multiplier, the paper's curve fits, manifold diagnostics, plots and reports.

    result = sweep(model, tokenizer, intervention, pairs, [-8, -4, 0, 4, 8], heldout_text=True)
    result.summary(); result.fit(); result.plot("sweep.png")
    write_report({"SPLIT": result, "CAA": other}, "reports/sweep")
"""
from ..lazy import lazy_attributes

_LAZY = {  # public name -> the submodule defining it (loaded on first use: scipy, matplotlib)
    "CurveFit": "fits", "FitResult": "fits", "decay": "fits", "detect_phases": "fits",
    "fit_curve": "fits", "fit_curves": "fits",
    "ManifoldReport": "manifold", "ReferenceCloud": "manifold", "concept_direction": "manifold",
    "correlate": "manifold", "correlate_reports": "manifold", "manifold_report": "manifold",
    "utility_drop": "manifold",
    "plot_accuracy_perplexity": "plots", "plot_frontier": "plots", "plot_log_odds": "plots",
    "plot_off_manifold": "plots", "plot_protocol": "plots", "plot_sweep": "plots",
    "verdict": "report", "write_report": "report",
    "Evaluation": "protocol", "Point": "protocol", "best_within": "protocol", "evaluate": "protocol",
    "SweepResult": "result", "summarize": "stats", "sweep": "sweeping", "SweepCache": "reuse",
}
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)

__all__ = sorted(_LAZY)
