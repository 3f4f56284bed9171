"""The frontier figure: test accuracy against the perplexity budget, at the strengths chosen on validation."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from _cells import runs

from split_plugin.analysis.protocol import BUDGETS, FRONTIER_BUDGETS, Evaluation
from split_plugin.fileio import atomic_path


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
