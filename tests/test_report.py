"""write_report: a rewrite killed half-way keeps the previous report; a user's file is never replaced."""
import numpy as np
import pytest
from tiny import names

from split_plugin import SplitPluginError
from split_plugin.analysis import SweepResult, plots, write_report


def test_report_rewrite_killed_half_way_keeps_the_previous_report(tmp_path, monkeypatch):
    pos = np.log(np.array([[0.2, 0.1], [0.5, 0.3], [0.7, 0.6]]))
    neg = np.log(np.array([[0.6, 0.5], [0.3, 0.3], [0.1, 0.2]]))
    result = SweepResult.from_logprobs([-1.0, 0.0, 1.0], pos, neg, [1, 1], [1, 1], bootstrap=0)
    out = write_report({"SPLIT": result}, tmp_path / "report", title="first")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "plot_frontier", killed)
    with pytest.raises(KeyboardInterrupt):
        write_report({"SPLIT": result}, tmp_path / "report", title="second")
    monkeypatch.undo()
    assert names(tmp_path) == ["report"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (tmp_path / "file").write_text("mine")
    with pytest.raises(SplitPluginError, match="is an existing file"):
        write_report({"SPLIT": result}, tmp_path / "file")
    assert (tmp_path / "file").read_text() == "mine"
