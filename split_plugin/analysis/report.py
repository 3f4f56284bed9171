"""A sweep report folder: CSV, JSON, PNG figures and a short Markdown summary, written atomically.

Layout of `out_dir`:
    report.md               tables per method, fits, phases, a verdict computed from the numbers
    report.json             the same facts, machine-readable (verdict, fits, correlations)
    summary.csv             one row per (method, multiplier)
    <method>.pairs.csv      the per-(multiplier, pair) table of each method
    <method>.sweep.json     each method's full SweepResult (SweepResult.from_json reads it)
    manifold.json           off-manifold reports per method (when given)
    log_odds.png, frontier.png, accuracy_perplexity.png, off_manifold.png (when given),
    <method>.png            per-method log-odds with fits and accuracy
"""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import SplitPluginError
from ..fileio import atomic_dir
from . import plots
from .fits import FitResult
from .manifold import ManifoldReport, correlate_reports
from .protocol import best_within
from .result import SweepResult, _jsonable

PPL_BUDGET = 0.05   # "useful steering" budget: at most +5% held-out perplexity
UTIL_BUDGET = 0.5   # without perplexity: at most 0.5 nats lower mean utility log-odds than at m = 0


def slug(name: str) -> str:
    """A file-name-safe version of a method name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "method"


def _check_results(results: Mapping[str, SweepResult]) -> None:
    if not results:
        raise SplitPluginError("write_report needs at least one SweepResult keyed by method name")
    bad = [k for k, v in results.items() if not isinstance(v, SweepResult)]
    if bad:
        raise SplitPluginError(f"results[{bad[0]!r}] is not a SweepResult; pass {{name: sweep(...)}}")
    slugs = [slug(k) for k in results]
    if len(set(slugs)) != len(slugs):
        raise SplitPluginError(f"method names {list(results)} collide as file names; rename them")


# -- the verdict -----------------------------------------------------------------------------
def _best_within_budget(result: SweepResult, use_ppl: bool) -> tuple[float, float] | None:
    """(accuracy, m) at the budget: `protocol.best_within` when perplexity was measured."""
    if use_ppl:
        row = best_within(result, PPL_BUDGET)
        return float(row["accuracy"]), float(row["multiplier"])
    return _best_within_utility_budget(result)


def _best_within_utility_budget(result: SweepResult) -> tuple[float, float] | None:
    """Fallback for sweeps without perplexity: best_within's rule with a utility log-odds budget."""
    ms, acc, util = result.multipliers, result.column("accuracy"), result.column("util_mean")
    within = (util[list(ms).index(0.0)] - util) <= UTIL_BUDGET
    candidates = [(a, -m, m) for a, m, ok in zip(acc, ms, within) if ok and m >= 0]
    if not candidates:
        return None
    a, _, m = max(candidates)
    return float(a), float(m)


def verdict(results: Mapping[str, SweepResult]) -> str:
    """One sentence: which method is most accurate within the utility budget, from the numbers."""
    use_ppl = all(np.isfinite(r.column("ppl_increase")).any() for r in results.values())
    budget = (f"at most {PPL_BUDGET:.0%} held-out perplexity increase" if use_ppl else
              f"at most {UTIL_BUDGET} nats drop in mean utility log-odds (no perplexity measured)")
    best = {name: _best_within_budget(r, use_ppl) for name, r in results.items()}
    ranked = sorted(((v[0], name, v[1]) for name, v in best.items() if v), reverse=True)
    base = next(iter(results.values()))
    acc0 = float(base.column("accuracy")[list(base.multipliers).index(0.0)])
    if not ranked:
        return f"With {budget}, no method has a multiplier within budget (unsteered accuracy {acc0:.0%})."
    acc = ranked[0][0]
    leaders = [f"{n} (m = {m:.3g})" for a, n, m in ranked if a == acc]
    others = "; ".join(f"{n} {a:.0%} (m = {m:.3g})" for a, n, m in ranked if a != acc)
    lead = (f"{leaders[0]} reaches the highest accuracy, {acc:.0%}" if len(leaders) == 1 else
            f"{' and '.join(leaders)} tie at the highest accuracy, {acc:.0%}")
    return (f"With {budget}, {lead}" + (f", vs {others}" if others else "")
            + f"; unsteered accuracy is {acc0:.0%}.")


# -- Markdown --------------------------------------------------------------------------------
READING = (
    "How to read the log-odds: preference log-odds is log P(A+) - log P(A-), how much the model "
    "prefers the target answer (> 0: it does; accuracy is the share of pairs where it does). Utility "
    "log-odds is log[(P(A+) + P(A-)) / (1 - P(A+) - P(A-))], how much probability the two answers "
    "keep at all. For short answers (Yes/No) steering often pushes mass onto the two answers, so "
    "utility log-odds can *rise* while the model gets worse at everything else; for free-text "
    "answers both answers are rare sequences and it mostly falls as text degrades. Held-out "
    "perplexity (generic prose, relative to m = 0) is reported beside it as the direct measure of "
    "whether the steered model still writes normal text.")
def _ci(row: dict, key: str, fmt: str = "{:.2f}") -> str:
    value, low, high = row[key], row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    if not np.isfinite(value):
        return "undefined"
    text = fmt.format(value)
    if low is not None and np.isfinite(low):
        text += f" [{fmt.format(low)}, {fmt.format(high)}]"
    return text


def _table(result: SweepResult) -> list[str]:
    """Markdown table: one line per multiplier."""
    lines = ["| m | accuracy [95% CI] | pref log-odds mean [95% CI] | util log-odds mean [95% CI] "
             "| util undefined | ppl increase |", "|---:|---|---|---|---:|---:|"]
    for row in result.summary_rows:
        ppl = f"{100 * row['ppl_increase']:+.1f}%" if np.isfinite(row["ppl_increase"]) else "n/a"
        lines.append(f"| {row['multiplier']:.3g} | {_ci(row, 'accuracy', '{:.2f}')} | {_ci(row, 'pref_mean')} "
                     f"| {_ci(row, 'util_mean')} | {row['util_undefined']}/{row['n_pairs']} | {ppl} |")
    return lines


def _fit_lines(fit: FitResult) -> list[str]:
    """R^2 per curve and branch, flags, and the preference phases."""
    lines = []
    for curve in (fit.preference, fit.utility):
        branches = ", ".join(f"{b} {v:.3f}" for b, v in curve.r2_branch.items())
        status = "ok" if curve.ok else "FLAGGED: " + "; ".join(curve.flags)
        lines.append(f"- {curve.kind} fit: R² = {curve.r2:.3f} ({branches}); {status}")
    for side, phases in fit.phases.items():
        if phases:
            spans = ", ".join(f"{name} {_span(phases.get(name))}" for name in
                              ("linear", "transition", "convergence"))
            lines.append(f"- preference phases, {side} side: {spans}")
    return lines


def _span(span) -> str:
    return "not reached" if not span else f"{span[0]:.3g} to {span[1]:.3g}"


def _markdown(title: str, results: Mapping[str, SweepResult], fits: Mapping[str, FitResult],
              sentence: str, correlation: dict | None) -> str:
    """The report's Markdown text."""
    lines = [f"# {title}", "", sentence, "", READING, ""]
    for name, result in results.items():
        meta = result.metadata
        lines += [f"## {name}", "",
                  f"{meta.get('form')} form at layer {meta.get('layer')} of a {meta.get('model_type')} "
                  f"model; concept {meta.get('concept')}; {result.n_pairs} pairs. Log-odds are in nats "
                  "(sequence sums); utility means are over the pairs where it is defined.", "",
                  *_table(result), "", *_fit_lines(fits[name]), "", f"![{name}]({slug(name)}.png)", ""]
    lines += ["## Figures", "", "![log-odds](log_odds.png)", "", "![frontier](frontier.png)", "",
              "![accuracy and perplexity](accuracy_perplexity.png)", ""]
    if correlation is not None:
        lines += ["## Off-manifold distance vs utility drop", "", "![off-manifold](off_manifold.png)", "",
                  _corr_line("all methods pooled", correlation)]
        lines += [_corr_line(n, c) for n, c in correlation.get("per_method", {}).items()] + [""]
    return "\n".join(lines)


def _corr_line(label: str, c: dict) -> str:
    return (f"- {label}: Pearson r = {c['pearson_r']:.2f} (p = {c['pearson_p']:.2g}), "
            f"Spearman rho = {c['spearman_rho']:.2f} (p = {c['spearman_p']:.2g}), n = {c['n']}")


# -- writing ---------------------------------------------------------------------------------
def _summary_csv(results: Mapping[str, SweepResult]) -> str:
    rows = [{"method": name, **row} for name, r in results.items() for row in r.summary_rows]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}
                     for row in rows)
    return out.getvalue()


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(_jsonable(data), indent=1) + "\n", encoding="utf-8")


def write_report(results: Mapping[str, SweepResult], out_dir: str | Path,
                 manifold: Mapping[str, ManifoldReport] | None = None,
                 title: str = "Steering sweep report") -> Path:
    """Write the report folder (see the module docstring); it appears complete or not at all."""
    _check_results(results)
    fits = {name: r.fit() for name, r in results.items()}
    sentence = verdict(results)
    correlation = correlate_reports(results, manifold) if manifold else None
    with atomic_dir(out_dir) as tmp:
        for name, result in results.items():
            result.to_csv(tmp / f"{slug(name)}.pairs.csv")
            result.to_json(tmp / f"{slug(name)}.sweep.json")
            plots.plot_sweep(result, tmp / f"{slug(name)}.png", fit=fits[name], name=name)
        (tmp / "summary.csv").write_text(_summary_csv(results), encoding="utf-8")
        plots.plot_log_odds(results, tmp / "log_odds.png", fits)
        plots.plot_frontier(results, tmp / "frontier.png")
        plots.plot_accuracy_perplexity(results, tmp / "accuracy_perplexity.png")
        if manifold:
            plots.plot_off_manifold(manifold, tmp / "off_manifold.png")
            _write_json(tmp / "manifold.json", {n: m.to_dict() for n, m in manifold.items()})
        _write_json(tmp / "report.json", {"title": title, "verdict": sentence, "methods": list(results),
                                          "fits": {n: f.to_dict() for n, f in fits.items()},
                                          "correlation": correlation})
        (tmp / "report.md").write_text(_markdown(title, results, fits, sentence, correlation), encoding="utf-8")
    return Path(out_dir)
