"""The comparison protocol: evaluation points, the one "best at a budget" rule, test scoring."""
import numpy as np
import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from split_plugin import Intervention, SplitPluginError
from split_plugin.analysis import Evaluation, Point, SweepCache, SweepResult, best_within, evaluate
from split_plugin.analysis.protocol import evaluate_with
from split_plugin.analysis.protocol import (FRONTIER_BUDGETS, RELATIVE_GRID, evaluation_points,
                                            trained_multipliers)
from split_plugin.data import ContrastivePair

HELDOUT = "The river bends twice before it reaches the old mill, and the path follows it. " * 6
PAIRS = [ContrastivePair(f"Would you take charge of group {i}?", "Yes" + "!" * (i % 3), "No") for i in range(6)]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _result(ms, acc, ppl_up):
    """A SweepResult whose summary has the given accuracy and perplexity change per m."""
    rows = [{"multiplier": m, "accuracy": a, "ppl_increase": p, "pref_mean": 0.0, "util_mean": 0.0}
            for m, a, p in zip(ms, acc, ppl_up)]
    return SweepResult(table={}, summary_rows=rows)


def test_grid_spans_three_decades_log_spaced():
    assert len(RELATIVE_GRID) >= 12
    assert RELATIVE_GRID[0] == pytest.approx(1e-3) and RELATIVE_GRID[-1] == pytest.approx(1.0)
    steps = np.diff(np.log(RELATIVE_GRID))
    assert np.allclose(steps, steps[0])


def test_points_hold_unsteered_grid_and_trained_multipliers():
    points = evaluation_points(0.004, trained=[0.2, 1.0, 2.0])
    ms = [p.multiplier for p in points]
    assert ms == sorted(ms) and ms[0] == 0.0
    grid = [p for p in points if p.source == "grid"]
    assert [p.strength for p in grid] == pytest.approx(list(RELATIVE_GRID))
    trained = {p.multiplier: p.strength for p in points if p.source == "trained"}
    assert trained == pytest.approx({0.2: 0.0008, 1.0: 0.004, 2.0: 0.008})


def test_a_grid_point_at_a_trained_multiplier_is_not_evaluated_twice():
    points = evaluation_points(0.99986, trained=[1.0])    # a CAA vector: m = 1 is strength ~1.0
    assert [p.source for p in points].count("grid") == len(RELATIVE_GRID) - 1
    assert points[-1] == Point(1.0, pytest.approx(0.99986), "trained")
    apart = evaluation_points(0.98, trained=[1.0])         # 2% apart: both kept
    assert [p.source for p in apart].count("grid") == len(RELATIVE_GRID)


def test_points_refuse_a_non_finite_edit():
    with pytest.raises(SplitPluginError, match="not finite"):
        evaluation_points(float("nan"), trained=[1.0])


def test_trained_multipliers_cover_the_range_and_m_one():
    model = tiny_model("llama")
    intervention = Intervention.for_model(model, "vector", 1)
    assert trained_multipliers(intervention) == [1.0]               # untrained: m = 1 only
    intervention.config.trained_range = [2.0, 20.0]
    ms = trained_multipliers(intervention)
    assert ms[0] == 1.0 and ms[1] == pytest.approx(2.0) and ms[-1] == pytest.approx(20.0) and len(ms) == 6


def test_best_within_is_most_accurate_within_budget_and_never_the_test_rule():
    result = _result([-1.0, 0.0, 1.0, 2.0, 4.0], [0.9, 0.5, 0.7, 0.8, 0.95], [0.0, 0.0, 0.01, 0.04, 0.3])
    assert best_within(result, 0.05)["multiplier"] == 2.0       # 4.0 is more accurate but too costly
    assert best_within(result, 0.005)["multiplier"] == 0.0      # nothing steered fits: unsteered
    assert best_within(result, 1.0)["multiplier"] == 4.0        # negative m never chosen
    tie = _result([0.0, 1.0, 2.0], [0.5, 0.8, 0.8], [0.0, 0.01, 0.02])
    assert best_within(tie, 0.05)["multiplier"] == 1.0          # ties: the gentler edit


def test_best_within_needs_perplexity():
    with pytest.raises(SplitPluginError, match="heldout_text"):
        best_within(_result([0.0, 1.0], [0.5, 0.6], [float("nan")] * 2), 0.05)


def _evaluate_random(form: str = "vector", model=None, cache=None, seed: int = 0) -> Evaluation:
    """A random intervention of `form` at layer 1, evaluated on the tiny llama (3 validation pairs)."""
    model = model or tiny_model("llama")
    torch.manual_seed(seed)
    intervention = Intervention.for_model(model, form, 1, rank=2)
    with torch.no_grad():
        for p in intervention.parameters():
            p.normal_()
    tests = {"test": PAIRS[3:], "other": PAIRS[:2]}
    return evaluate(model, tiny_tokenizer(), intervention, PAIRS[:3], tests, HELDOUT, name="random", cache=cache)


@pytest.fixture(scope="module")
def evaluation():
    return _evaluate_random()


def test_evaluations_sharing_a_cache_choose_and_score_as_alone(evaluation):
    model, cache = tiny_model("llama"), SweepCache()
    _evaluate_random("lora", model, cache, seed=1)              # fills the cache
    shared = _evaluate_random("vector", model, cache)           # the fixture's intervention again
    assert cache.prefixes and cache.unsteered and cache.packing
    assert shared.points == evaluation.points
    np.testing.assert_allclose(shared.validation.column("perplexity"),
                               evaluation.validation.column("perplexity"), rtol=1e-4)
    for name in ("test", "other"):
        assert [r["multiplier"] for r in shared.frontier(name)] == [r["multiplier"] for r in evaluation.frontier(name)]
        np.testing.assert_allclose([r["pref_mean"] for r in shared.frontier(name)],
                                   [r["pref_mean"] for r in evaluation.frontier(name)], rtol=1e-4, atol=1e-6)


def test_evaluate_scores_tests_only_at_validation_choices(evaluation):
    chosen = {evaluation.choose(b).multiplier for b in FRONTIER_BUDGETS} | {0.0}
    for test in evaluation.tests.values():
        assert set(test.multipliers.tolist()) == chosen
    assert len(evaluation.validation.multipliers) == len(evaluation.points)
    row = evaluation.at_budget(0.05)
    val = best_within(evaluation.validation, 0.05)
    assert row["multiplier"] == val["multiplier"] and row["val_accuracy"] == val["accuracy"]
    assert row["ppl_increase"] <= 0.05 or row["multiplier"] == 0.0
    assert len(evaluation.frontier("other")) == len(FRONTIER_BUDGETS)


def test_evaluation_round_trips_through_json(evaluation, tmp_path):
    evaluation.to_json(tmp_path / "e.json")
    back = Evaluation.from_json(tmp_path / "e.json")
    assert back.points == evaluation.points and back.params == evaluation.params
    assert back.at_budget(0.1, "other") == evaluation.at_budget(0.1, "other")


def test_row_at_an_unscored_multiplier_says_why(evaluation):
    unscored = next(p.multiplier for p in evaluation.points if p.multiplier not in evaluation.tests["test"].multipliers)
    with pytest.raises(SplitPluginError, match="chosen on validation"):
        evaluation.row(unscored)
    with pytest.raises(SplitPluginError, match="no test set"):
        evaluation.row(0.0, "nope")


def test_evaluate_refuses_empty_inputs():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    intervention = Intervention.for_model(model, "vector", 1)
    with pytest.raises(SplitPluginError, match="heldout_text is empty"):
        evaluate(model, tok, intervention, PAIRS, {"test": PAIRS}, "  ")


def test_evaluate_with_scores_validation_everywhere_and_tests_at_the_choices_only():
    """A fake scorer (accuracy and perplexity both grow with the edit) stands in for a non-Intervention."""
    ratio, calls = 0.01, []

    def score(pairs, multipliers, text):
        ms = sorted({0.0, *multipliers})
        calls.append((len(pairs), ms, text))
        cost = [float("nan") if text is None else (m * ratio) ** 2 for m in ms]
        return _result(ms, [min(1.0, 0.5 + m * ratio) for m in ms], cost)

    e = evaluate_with(score, ratio, [1.0, 3.0], PAIRS[:4], {"test": PAIRS[4:]}, HELDOUT, name="fake",
                      params=7, train_seconds=2.5)
    (n_val, val_ms, val_text), *test_calls = calls
    assert n_val == 4 and val_text == HELDOUT and val_ms == [p.multiplier for p in e.points]
    assert len(test_calls) == 1 and test_calls[0][0] == 2 and test_calls[0][2] is None
    assert test_calls[0][1] == sorted({e.choose(b).multiplier for b in FRONTIER_BUDGETS} | {0.0})
    # accuracy rises with m, so the choice at +5% is the strongest point with (m * ratio)^2 <= 0.05
    expect = max(p.multiplier for p in e.points if (p.multiplier * ratio) ** 2 <= 0.05)
    assert e.at_budget(0.05)["multiplier"] == expect and e.at_budget(0.05)["strength"] == pytest.approx(expect * ratio)
    assert [r["multiplier"] for r in e.trained_rows()] == [1.0, 3.0]
    assert (e.name, e.params, e.train_seconds, e.extra["edit_ratio"]) == ("fake", 7, 2.5, ratio)
