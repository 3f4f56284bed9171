"""The comparison protocol: where each method is evaluated, and how its strength is chosen.

Methods live on different multiplier scales (a lora-form SPLIT edit at m = 1 can be 0.004 of
the residual norm, a CAA vector at m = 1 close to 1.0), so every method is evaluated at

- a log-spaced grid of relative edit strengths `|m * delta| / median |h_L|`, 0.001 to 1.0, and
- the multipliers it was trained at (m = 1 and its factor range),

and its operating strength at a perplexity budget is chosen on **validation** pairs by one rule,
`best_within`: the most accurate multiplier whose held-out perplexity increase stays within the
budget. The test sets are then scored at the chosen multipliers only; they choose nothing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from torch import nn

from ..errors import SplitPluginError
from ..fileio import atomic_write_text
from ..intervention import Intervention
from ..pairs import ContrastivePair
from ..strength import edit_ratio
from .result import SweepResult
from .reuse import SweepCache
from .sweeping import sweep

RELATIVE_GRID = tuple(float(s) for s in np.geomspace(1e-3, 1.0, 13))  # 0.001 .. 1.0, x1.78 per step
BUDGETS = (0.02, 0.05, 0.10)  # held-out perplexity increase: +2%, +5%, +10%
FRONTIER_BUDGETS = (0.0, 0.01, 0.02, 0.05, 0.10, 0.20, 0.50, 1.0)
MAX_TRAINED_POINTS = 5
SAME_POINT = 0.01  # a grid point within 1% (relative m) of a trained multiplier is that point again: dropped
PROTOCOL_VERSION = 1


@dataclass(frozen=True)
class Point:
    """One evaluated multiplier: `strength` is its relative edit norm, `source` why it is there."""

    multiplier: float
    strength: float
    source: str  # "unsteered" | "grid" | "trained"


def trained_multipliers(intervention: Intervention) -> list[float]:
    """m = 1 and MAX_TRAINED_POINTS log-spaced strengths over the |m| range it was trained at.

    An untrained intervention (CAA, an imported adapter) has no range: its trained point is m = 1.
    """
    span = intervention.config.trained_range
    if not span:
        return [1.0]
    low, high = span
    return sorted({1.0, *(float(m) for m in np.geomspace(low, high, MAX_TRAINED_POINTS))})


def evaluation_points(ratio_at_one: float, trained: Sequence[float],
                      grid: Sequence[float] = RELATIVE_GRID) -> list[Point]:
    """The unsteered point, the relative-strength grid and the trained multipliers, sorted by m.

    A grid point within SAME_POINT of a trained multiplier is left out (e.g. CAA's m = 1 is its
    relative strength ~1.0): it would cost a full pass for the same numbers.
    """
    if not np.isfinite(ratio_at_one) or ratio_at_one < 0:
        raise SplitPluginError(f"edit ratio at m = 1 is {ratio_at_one!r}; the intervention's update is not "
                               "finite: retrain it (check the training loss for NaN)")
    trained = [float(m) for m in trained if m > 0]
    points = {0.0: Point(0.0, 0.0, "unsteered")}
    if ratio_at_one > 0:
        steps = {s / ratio_at_one: float(s) for s in grid if s > 0}
        points.update({m: Point(m, s, "grid") for m, s in steps.items()
                       if not any(abs(m - t) <= SAME_POINT * t for t in trained)})
    points.update({m: Point(m, m * ratio_at_one, "trained") for m in trained})
    return [points[m] for m in sorted(points)]


def best_within(result: SweepResult, budget: float) -> dict:
    """THE "best at a budget": the most accurate non-negative m whose perplexity increase <= budget.

    Ties go to the smaller m. m = 0 is always eligible, so a method that cannot steer within the
    budget scores as unsteered instead of vanishing. Use it on validation sweeps only.
    """
    rows = [r for r in result.summary() if r["multiplier"] >= 0]
    if not any(np.isfinite(r["ppl_increase"]) for r in rows):
        raise SplitPluginError("this sweep has no held-out perplexity; sweep with heldout_text=True")
    ok = [r for r in rows if r["multiplier"] == 0.0 or (np.isfinite(r["ppl_increase"])
                                                          and r["ppl_increase"] <= budget)]
    return max(ok, key=lambda r: (r["accuracy"], -r["multiplier"]))


@dataclass
class Evaluation:
    """One method under the protocol: its validation sweep, its test sweeps, the points used."""

    name: str
    points: list[Point]
    validation: SweepResult
    tests: dict[str, SweepResult]
    params: int = 0
    train_seconds: float | None = None
    extra: dict = field(default_factory=dict)

    def point(self, multiplier: float) -> Point:
        return next(p for p in self.points if p.multiplier == multiplier)

    def choose(self, budget: float) -> Point:
        """The operating point at `budget`, chosen on validation pairs."""
        return self.point(best_within(self.validation, budget)["multiplier"])

    def row(self, multiplier: float, test: str = "test") -> dict:
        """Test-set summary at `multiplier`, with the held-out perplexity change from validation."""
        if test not in self.tests:
            raise SplitPluginError(f"no test set {test!r}; this evaluation has {sorted(self.tests)}")
        found = [r for r in self.tests[test].summary() if r["multiplier"] == multiplier]
        if not found:
            raise SplitPluginError(f"m = {multiplier} was not scored on {test!r}; evaluate() scores the "
                                   "multipliers chosen on validation only")
        val = next(r for r in self.validation.summary() if r["multiplier"] == multiplier)
        point = self.point(multiplier)
        return {"multiplier": multiplier, "strength": point.strength, "source": point.source,
                "val_accuracy": val["accuracy"], "accuracy": found[0]["accuracy"],
                "pref_mean": found[0]["pref_mean"], "util_mean": found[0]["util_mean"],
                "ppl_increase": val["ppl_increase"]}

    def at_budget(self, budget: float, test: str = "test") -> dict:
        """Test accuracy, log-odds and perplexity at the strength chosen on validation for `budget`."""
        return {"budget": budget, **self.row(self.choose(budget).multiplier, test)}

    def frontier(self, test: str = "test") -> list[dict]:
        """Test accuracy reachable per perplexity budget, each strength chosen on validation."""
        return [self.at_budget(b, test) for b in FRONTIER_BUDGETS]

    def trained_rows(self) -> list[dict]:
        """Validation accuracy and perplexity change at the multipliers it was trained at."""
        trained = [p for p in self.points if p.source == "trained"]
        by_m = {r["multiplier"]: r for r in self.validation.summary()}
        return [{"multiplier": p.multiplier, "strength": p.strength, "val_accuracy": by_m[p.multiplier]["accuracy"],
                 "ppl_increase": by_m[p.multiplier]["ppl_increase"]} for p in trained]

    # -- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"protocol_version": PROTOCOL_VERSION, "name": self.name,
                "points": [vars(p) for p in self.points], "validation": self.validation.to_dict(),
                "tests": {k: v.to_dict() for k, v in self.tests.items()}, "params": self.params,
                "train_seconds": self.train_seconds, "extra": self.extra}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Evaluation":
        if data.get("protocol_version") != PROTOCOL_VERSION:
            raise SplitPluginError(f"evaluation written by protocol version {data.get('protocol_version')!r}, "
                                   f"this is version {PROTOCOL_VERSION}; rerun the evaluation")
        return cls(name=data["name"], points=[Point(**p) for p in data["points"]],
                   validation=SweepResult.from_dict(data["validation"]),
                   tests={k: SweepResult.from_dict(v) for k, v in data["tests"].items()},
                   params=data.get("params", 0), train_seconds=data.get("train_seconds"),
                   extra=dict(data.get("extra", {})))

    def to_json(self, path: str | Path) -> None:
        """Write atomically; `Evaluation.from_json` reads it back."""
        atomic_write_text(path, json.dumps(self.to_dict()) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> "Evaluation":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _test_multipliers(validation: SweepResult, budgets: Sequence[float]) -> list[float]:
    """What the test sets are scored at: the validation choices for every budget, and m = 0."""
    chosen = {best_within(validation, b)["multiplier"] for b in (*FRONTIER_BUDGETS, *budgets)}
    return sorted(chosen | {0.0})


def _require_heldout(heldout_text: str) -> None:
    if not heldout_text or not heldout_text.strip():
        raise SplitPluginError("heldout_text is empty; the protocol chooses strengths by held-out perplexity "
                               "(pass split_plugin.load_heldout_text())")


#: score(pairs, multipliers, heldout_text or None) -> SweepResult; m = 0 is always included
Score = Callable[[Sequence[ContrastivePair], Sequence[float], str | None], SweepResult]


def evaluate_with(score: Score, ratio_at_one: float, trained: Sequence[float],
                  validation: Sequence[ContrastivePair], tests: Mapping[str, Sequence[ContrastivePair]],
                  heldout_text: str, *, name: str = "method", grid: Sequence[float] = RELATIVE_GRID,
                  budgets: Sequence[float] = BUDGETS, params: int = 0,
                  train_seconds: float | None = None) -> Evaluation:
    """The protocol for any scorer (e.g. a pyreft model, whose edit is not an Intervention).

    `ratio_at_one` places the grid (|delta at m = 1| / median |h|); `trained` are the multipliers
    it was trained at. Validation is scored with held-out perplexity at every point, each test
    set without it at the validation choices only.
    """
    _require_heldout(heldout_text)
    points = evaluation_points(ratio_at_one, trained, grid)
    val = score(validation, [p.multiplier for p in points], heldout_text)
    chosen = _test_multipliers(val, budgets)
    scored = {k: score(pairs, chosen, None) for k, pairs in tests.items()}
    return Evaluation(name, points, val, scored, params, train_seconds, {"edit_ratio": ratio_at_one})


def evaluate(model: nn.Module, tokenizer, intervention: Intervention, validation: Sequence[ContrastivePair],
             tests: Mapping[str, Sequence[ContrastivePair]], heldout_text: str, *, name: str = "method",
             trained: Sequence[float] | None = None, grid: Sequence[float] = RELATIVE_GRID,
             budgets: Sequence[float] = BUDGETS, progress: bool = False,
             train_seconds: float | None = None, cache: SweepCache | None = None) -> Evaluation:
    """Evaluate one intervention under the protocol (see the module docstring).

    `validation` chooses the strengths; `tests` (name -> pairs, e.g. one set per prompt format)
    are scored only at the chosen strengths ({} while tuning: validation only). `trained`: the multipliers it was trained at
    (default: `trained_multipliers(intervention)`; pass [1.0] for a peer's own trained point).
    `cache`: one SweepCache passed to the evaluations of several interventions on the same model
    and pairs runs each batch's layers below L and its unsteered pass once for all of them.
    """
    _require_heldout(heldout_text)

    def score(pairs: Sequence[ContrastivePair], multipliers: Sequence[float], text: str | None) -> SweepResult:
        return sweep(model, tokenizer, intervention, pairs, multipliers, heldout_text=text, bootstrap=0,
                     progress=progress, cache=cache)

    return evaluate_with(score, edit_ratio(model, tokenizer, intervention, heldout_text),
                         trained_multipliers(intervention) if trained is None else trained,
                         validation, tests, heldout_text, name=name, grid=grid, budgets=budgets,
                         params=intervention.num_parameters(), train_seconds=train_seconds)
