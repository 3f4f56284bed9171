"""The main job end to end on a tiny model: every method trains, is evaluated and reaches the report."""
from __future__ import annotations

import csv

import pytest

from split_plugin.analysis.protocol import Evaluation, best_within
from split_plugin.demo import run_demo
from split_plugin.errors import SplitPluginError
from tiny import tiny_model, tiny_tokenizer


def test_demo_report_has_every_method_side_by_side(tmp_path):
    out = run_demo(tmp_path / "demo", concept="optimism", quick=True, layer=2, methods="CAA,SPLIT,SPLIT-lora",
                   model_and_tokenizer=(tiny_model("llama"), tiny_tokenizer()))
    rows = list(csv.DictReader((out / "table.csv").open(encoding="utf-8")))
    assert {r["method"] for r in rows} == {"CAA", "SPLIT", "SPLIT-lora"}
    assert {r["budget_pct"] for r in rows} == {"2", "5", "10"}
    for name in ("README.md", "generations.md", "protocol.png", "sweep/report.md",
                 "interventions/SPLIT-lora/config.json"):
        assert (out / name).stat().st_size > 0
    card = (out / "interventions" / "SPLIT-lora" / "README.md").read_text(encoding="utf-8")
    assert f'from_pretrained("{out / "interventions" / "SPLIT-lora"}")' in card  # the final folder, not the temp one
    assert ".tmp" not in card
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "| SPLIT-lora |" in readme and "split-steer demo --quick --concept optimism" in readme
    assert all(f"{stage} " in readme for stage in ("training", "evaluation", "report and generations"))
    generations = (out / "generations.md").read_text(encoding="utf-8")
    assert generations.count("- **SPLIT** (m = ") == 3 and generations.count("- **unsteered**") == 3
    for r in rows:  # every reported strength was chosen on validation and respects its budget
        ev = Evaluation.from_json(out / "interventions" / r["method"] / "evaluation.json")
        chosen = best_within(ev.validation, int(r["budget_pct"]) / 100)
        assert float(r["multiplier"]) == pytest.approx(chosen["multiplier"], abs=1e-4)
        assert float(r["ppl_increase_pct"]) <= int(r["budget_pct"]) or chosen["multiplier"] == 0.0


def test_demo_refuses_an_unknown_method(tmp_path):
    with pytest.raises(SplitPluginError, match="use a comma list of"):
        run_demo(tmp_path / "demo", methods="CAA,prefix", model_and_tokenizer=(None, None))
    assert not (tmp_path / "demo").exists()
