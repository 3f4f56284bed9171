"""SweepResult as a user reads it: ordered summary, compact table, strength within a budget, plot."""
import math

import numpy as np
import pytest

from split_plugin import SplitPluginError
from split_plugin.analysis import SweepResult

MS = [-4.0, 0.0, 2.0, 4.0, 8.0]
PPL = [12.0, 10.0, 10.3, 10.6, 30.0]  # +20%, 0, +3%, +6%, +200%


def _result(perplexity=PPL, bootstrap=50) -> SweepResult:
    rng = np.random.default_rng(0)
    base = np.log(rng.uniform(0.05, 0.3, size=(len(MS), 6)))
    shift = np.array(MS)[:, None] * 0.2
    return SweepResult.from_logprobs(MS, base + shift, base - shift, [2] * 6, [2] * 6,
                                     perplexity=perplexity, bootstrap=bootstrap)


def test_summary_is_ordered_by_m_even_from_unordered_rows():
    result = _result()
    result.summary_rows.reverse()  # e.g. a hand-edited JSON
    assert [r["multiplier"] for r in result.summary()] == sorted(MS)
    assert "fraction" in SweepResult.summary.__doc__ and "ppl_increase" in SweepResult.summary.__doc__


def test_str_is_a_compact_rounded_table():
    text = str(_result())
    lines = text.splitlines()
    assert len(lines) == 1 + 1 + len(MS) + 1  # repr, header, one line per m, legend
    assert "+200.0%" in text and "+6.0%" in text          # perplexity change as a percentage
    assert max(len(line) for line in lines[1:-1]) < 80    # fits a terminal
    assert not any(len(tok) > 8 for line in lines[2:-1] for tok in line.split() if tok[0].isdigit())


def test_table_without_perplexity_says_so():
    text = _result(perplexity=None, bootstrap=0).summary_table()
    assert " - " in text and "nan" not in text.lower()


def test_strongest_within_budget():
    result = _result()
    assert result.strongest_within(0.05) == 2.0
    assert result.strongest_within(0.10) == 4.0
    assert result.strongest_within(0.25, sign=-1) == -4.0
    assert result.strongest_within(0.01) == 0.0  # nothing steered stays within 1%
    with pytest.raises(SplitPluginError, match="no held-out perplexity"):
        _result(perplexity=None).strongest_within(0.05)


def test_plot_fits_by_default(tmp_path, monkeypatch):
    from split_plugin.analysis import plots

    seen = {}
    real = plots.plot_sweep

    def spy(result, path, fit=None, name=None):
        seen["fit"] = fit
        real(result, path, fit=fit, name=name)

    monkeypatch.setattr(plots, "plot_sweep", spy)
    result = _result()
    result.plot(tmp_path / "a.png")
    assert seen["fit"] is not None and seen["fit"].preference.kind == "preference"
    result.plot(tmp_path / "b.png", fit=None)
    assert seen["fit"] is None
    assert (tmp_path / "a.png").stat().st_size > 1000


def test_frontier_labels_are_rounded(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from split_plugin.analysis import plots

    labels = []
    real = Axes.annotate
    monkeypatch.setattr(Axes, "annotate", lambda self, text, *a, **k: labels.append(text) or real(self, text, *a, **k))
    ms = [0.0, 1.23456789, 12.3456789]
    result = SweepResult.from_logprobs(ms, np.full((3, 2), -3.0) + 0.5 * np.arange(3)[:, None], np.full((3, 2), -4.0),
                                       [1, 1], [1, 1], bootstrap=0)
    plots.plot_frontier({"A": result}, tmp_path / "f.png")
    assert labels == ["0", "1.23", "12.3"]
    assert all(math.isfinite(float(x)) for x in labels)
