"""`SweepResult`: the tidy per-(multiplier, pair) table of a sweep, its summary and metadata."""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import SplitPluginError
from ..fileio import atomic_write_text
from .stats import log_odds, summarize

TABLE_COLUMNS = ("multiplier", "pair", "logp_pos", "logp_neg", "tokens_pos", "tokens_neg",
                 "pref_log_odds", "util_log_odds", "correct")
FORMAT_VERSION = 1


def _jsonable(value: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> python, so the JSON is strict."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _nan(value: Any) -> Any:
    """None (a NaN written as JSON null) back to NaN."""
    return float("nan") if value is None else value


@dataclass
class SweepResult:
    """A multiplier sweep of one intervention on one set of pairs.

    `table` holds columns of equal length, one entry per (multiplier, pair), multiplier-major
    (see TABLE_COLUMNS); `util_log_odds` is NaN where undefined (p_pos + p_neg >= 1).
    `summary_rows` holds one dict per multiplier (see `stats.summarize`).
    """

    table: dict[str, np.ndarray]
    summary_rows: list[dict]
    metadata: dict = field(default_factory=dict)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_logprobs(cls, multipliers: Sequence[float], logp_pos: np.ndarray, logp_neg: np.ndarray,
                      tokens_pos: np.ndarray, tokens_neg: np.ndarray,
                      perplexity: Sequence[float] | None = None, metadata: dict | None = None,
                      bootstrap: int = 1000, seed: int = 0) -> "SweepResult":
        """Build the table and summary from [M, N] answer log-prob sums (and [N] token counts)."""
        logp_pos, logp_neg = np.asarray(logp_pos, np.float64), np.asarray(logp_neg, np.float64)
        ms = np.asarray(multipliers, dtype=np.float64)
        if logp_pos.shape != logp_neg.shape or logp_pos.shape[0] != ms.size:
            raise SplitPluginError(f"log-prob arrays must both be [multipliers={ms.size}, pairs], got "
                                   f"{logp_pos.shape} and {logp_neg.shape}")
        n_m, n = logp_pos.shape
        pref, util = log_odds(logp_pos, logp_neg)
        table = {"multiplier": np.repeat(ms, n), "pair": np.tile(np.arange(n), n_m),
                 "logp_pos": logp_pos.ravel(), "logp_neg": logp_neg.ravel(),
                 "tokens_pos": np.tile(np.asarray(tokens_pos, np.int64), n_m),
                 "tokens_neg": np.tile(np.asarray(tokens_neg, np.int64), n_m),
                 "pref_log_odds": pref.ravel(), "util_log_odds": util.ravel(),
                 "correct": (pref > 0).ravel()}
        summary = summarize(ms.tolist(), pref, util, perplexity, bootstrap=bootstrap, seed=seed)
        meta = {"n_pairs": n, "multipliers": ms.tolist(), "bootstrap": bootstrap, "seed": seed,
                **(metadata or {})}
        return cls(table=table, summary_rows=summary, metadata=meta)

    # -- views -----------------------------------------------------------------------------
    @property
    def multipliers(self) -> np.ndarray:
        return np.array([row["multiplier"] for row in self.summary_rows])

    @property
    def n_pairs(self) -> int:
        return int(self.metadata.get("n_pairs", 0))

    def summary(self) -> list[dict]:
        """One dict per multiplier, ordered by m (a copy); `print(result)` shows them compactly.

        Keys: `multiplier` (m); `accuracy` (share of pairs with P(A+) > P(A-), a fraction in
        [0, 1]); `pref_*` / `util_*` (preference / utility log-odds in nats: mean, median and
        their 95% bootstrap CIs, `*_ci_low` / `*_ci_high`); `util_defined` / `util_undefined`
        (pairs where utility log-odds exists / not); `perplexity` (held-out, NaN when not
        measured); `ppl_increase` (perplexity / perplexity at m = 0 - 1, a fraction: 0.05 is +5%).
        """
        return sorted((dict(row) for row in self.summary_rows), key=lambda row: row["multiplier"])

    def strongest_within(self, max_ppl_increase: float = 0.05, sign: int = 1) -> float:
        """The largest |m| (of `sign`) whose held-out perplexity rose by at most `max_ppl_increase`.

        Pick a strength on validation pairs with this, then report the test split at it: the
        test pairs never choose their own strength. 0.0 when no steered m stays within budget.
        """
        if sign not in (1, -1):
            raise SplitPluginError(f"sign must be 1 or -1, got {sign!r}")
        increase = self.column("ppl_increase")
        if not np.isfinite(increase).any():
            raise SplitPluginError("this sweep has no held-out perplexity; sweep with heldout_text=True")
        within = [float(m) for m, up in zip(self.multipliers, increase)
                  if m * sign > 0 and np.isfinite(up) and up <= max_ppl_increase]
        return max(within, key=abs, default=0.0)

    def summary_table(self) -> str:
        """A compact table, one line per m: accuracy, mean log-odds [nats], perplexity change."""
        head = f"{'m':>8} {'accuracy':>8} {'95% CI':>13} {'pref':>7} {'util':>7} {'ppl':>8} {'ppl change':>10}"
        lines = [head]
        for r in self.summary():
            ci = f"[{r['accuracy_ci_low']:.2f}, {r['accuracy_ci_high']:.2f}]" \
                if math.isfinite(r["accuracy_ci_low"]) else "-"
            change = f"{100 * r['ppl_increase']:+.1f}%" if math.isfinite(r["ppl_increase"]) else "-"
            ppl = f"{r['perplexity']:.2f}" if math.isfinite(r["perplexity"]) else "-"
            lines.append(f"{r['multiplier']:>8.3g} {r['accuracy']:>8.2f} {ci:>13} {r['pref_mean']:>+7.2f} "
                         f"{r['util_mean']:>+7.2f} {ppl:>8} {change:>10}")
        lines.append("pref / util: mean preference / utility log-odds [nats] over pairs; ppl: held-out "
                     "perplexity; ppl change: vs m = 0")
        return "\n".join(lines)

    def __str__(self) -> str:
        return f"{self!r}\n{self.summary_table()}"

    def column(self, key: str) -> np.ndarray:
        """One summary statistic across multipliers, e.g. `column("pref_mean")`."""
        if self.summary_rows and key not in self.summary_rows[0]:
            raise SplitPluginError(f"no summary statistic {key!r}; have {sorted(self.summary_rows[0])}")
        return np.array([row[key] for row in self.summary_rows], dtype=np.float64)

    def per_pair(self, key: str) -> np.ndarray:
        """A table column reshaped to [multipliers, pairs]."""
        return np.asarray(self.table[key]).reshape(len(self.summary_rows), -1)

    def rows(self) -> list[dict]:
        """The table as a list of dicts (one per multiplier and pair)."""
        n = len(self.table["multiplier"])
        return [{k: self.table[k][i].item() for k in TABLE_COLUMNS} for i in range(n)]

    def to_pandas(self):
        """The table as a pandas DataFrame (pandas is optional)."""
        try:
            import pandas as pd
        except ImportError:
            raise SplitPluginError("to_pandas needs pandas: pip install pandas") from None
        return pd.DataFrame({k: self.table[k] for k in TABLE_COLUMNS})

    # -- files -----------------------------------------------------------------------------
    def to_csv(self, path: str | Path, which: str = "table") -> None:
        """Write the per-pair table (`which="table"`) or the summary (`"summary"`) as CSV, atomically."""
        if which == "table":
            header, rows = list(TABLE_COLUMNS), self.rows()
        elif which == "summary":
            header, rows = list(self.summary_rows[0]), self.summary_rows
        else:
            raise SplitPluginError(f"which must be 'table' or 'summary', got {which!r}")
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _csv_value(row[k]) for k in header} for row in rows)
        atomic_write_text(path, out.getvalue())

    def to_dict(self) -> dict:
        """A strict-JSON-ready dict (NaN written as null)."""
        return _jsonable({"format_version": FORMAT_VERSION, "metadata": self.metadata,
                          "summary": self.summary_rows,
                          "table": {k: np.asarray(self.table[k]).tolist() for k in TABLE_COLUMNS}})

    def to_json(self, path: str | Path) -> None:
        """Write metadata, summary and table as JSON, atomically (`from_json` reads it back)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def from_dict(cls, data: dict) -> "SweepResult":
        """Rebuild from `to_dict` output."""
        try:
            raw = data["table"]
            table = {k: np.array([_nan(v) for v in raw[k]]) for k in TABLE_COLUMNS}
            table["correct"] = table["correct"].astype(bool)
            summary = [{k: _nan(v) for k, v in row.items()} for row in data["summary"]]
            return cls(table=table, summary_rows=summary, metadata=dict(data.get("metadata", {})))
        except (KeyError, TypeError) as exc:
            raise SplitPluginError(f"not a sweep result ({exc!r} missing or malformed); "
                                   "pass a file written by SweepResult.to_json") from None

    @classmethod
    def from_json(cls, path: str | Path) -> "SweepResult":
        """Load a sweep written by `to_json`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise SplitPluginError(f"cannot read sweep result {path}: {exc}") from None
        return cls.from_dict(data)

    # -- analysis --------------------------------------------------------------------------
    def fit(self, restarts: int = 8, seed: int = 0):
        """Fit the paper's curves to the mean PrefOdds / UtilOdds per multiplier (see fits.py)."""
        from .fits import fit_curves
        return fit_curves(self.multipliers, self.column("pref_mean"), self.column("util_mean"),
                          restarts=restarts, seed=seed)

    def plot(self, path: str | Path, fit: Any = True) -> None:
        """PNG: pref and util log-odds vs m with 95% CI bands, the paper's fitted curves and
        phases (`fit=True`: fitted here; a `FitResult`: that one; None: no curves), and accuracy."""
        from .plots import plot_sweep
        if fit is True:
            fit = self.fit()
        plot_sweep(self, path, fit=None if fit is False else fit)

    def __repr__(self) -> str:
        meta = self.metadata
        return (f"SweepResult(form={meta.get('form')}, layer={meta.get('layer')}, "
                f"pairs={self.n_pairs}, multipliers={self.multipliers.tolist()})")


def _csv_value(value: Any) -> Any:
    """Empty cell for NaN, plain numbers otherwise."""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value
