"""The main job end to end on a tiny model: every method trains, sweeps and reaches the report."""
from __future__ import annotations

import csv

import pytest

from split_plugin.demo import run_demo
from split_plugin.errors import SplitPluginError
from tiny import tiny_model, tiny_tokenizer


def test_demo_report_has_every_method_side_by_side(tmp_path):
    out = run_demo(tmp_path / "demo", concept="optimism", quick=True, layer=2,
                   model_and_tokenizer=(tiny_model("llama"), tiny_tokenizer()))
    rows = list(csv.DictReader((out / "table.csv").open(encoding="utf-8")))
    assert {r["method"] for r in rows} == {"CAA", "SFT", "SPLIT", "SPLIT+KL"}
    assert {float(r["strength"]) for r in rows} == {0.0, 0.05, 0.1, 0.25, 0.5}
    for name in ("README.md", "generations.md", "sweep/frontier.png", "sweep/report.md",
                 "interventions/SPLIT+KL/config.json"):
        assert (out / name).stat().st_size > 0
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "| SPLIT+KL |" in readme and "split-steer demo --quick --concept optimism" in readme
    assert all(f"{stage} " in readme for stage in ("training", "sweeps", "report and generations"))
    generations = (out / "generations.md").read_text(encoding="utf-8")
    assert generations.count("- **SPLIT+KL** (m = ") == 3 and generations.count("- **unsteered**") == 3
    unsteered = [r for r in rows if float(r["strength"]) == 0.0]
    assert len({r["accuracy"] for r in unsteered}) == 1  # m = 0 is the same model for every method


def test_demo_refuses_an_unknown_form(tmp_path):
    with pytest.raises(SplitPluginError, match="use a comma list of"):
        run_demo(tmp_path / "demo", forms="vector,prefix", model_and_tokenizer=(None, None))
    assert not (tmp_path / "demo").exists()
