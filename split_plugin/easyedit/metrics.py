"""Log-odds metrics for any EasyEdit method, next to the host's own.

For each case, with the pair (prompt; target_new vs target_neg, else ground_truth):
- `pref_log_odds` = log P(target_new | prompt) - log P(negative | prompt)   (sequence sums)
- `util_log_odds` = log[(p_new + p_neg) / (1 - p_new - p_neg)]; NaN where undefined
- `pref_acc`      = 1.0 if pref_log_odds > 0 else 0.0
The model is scored as it is at the call: inside the host's evaluation that is the unedited
model ("pre") and the edited one ("post": for SPLIT, hooked at the trained multiplier). The
answers are formatted as SPLIT trains them (the tokenizer's chat template when it has one).
Without a negative answer `pref_*` are NaN and `util_log_odds` is the positive's log-odds.

`enable_log_odds_metrics()` wraps the host's `compute_edit_quality` (as BaseEditor calls it)
so the per-case `pre`/`post` dicts gain these keys; `summarize()` averages host and our
metrics; on the git version the host's `summary_metrics` also prints our means.
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from ..data import encode_pairs
from ..objectives import AnswerTokens, preference_log_odds, sequence_logprobs, utility_log_odds
from .apply import requests_to_pairs

METRIC_KEYS = ("pref_log_odds", "util_log_odds", "pref_acc")
HOST_KEYS = ("rewrite_acc", "rephrase_acc", "rewrite_ppl")
ALL_METHODS = "all"

_enabled: set[str] = {"SPLIT"}
_all_methods = False


# -- computing -------------------------------------------------------------------------------------------
@torch.no_grad()
def log_odds_metrics(model: torch.nn.Module, tok: Any, record: Mapping, hparams: Any = None) -> dict[str, float]:
    """The three metrics for one request on the model as it is now (hooks included)."""
    pairs, missing = requests_to_pairs([record])
    max_length = getattr(hparams, "train_max_length", None) or 256
    system_prompt = getattr(hparams, "system_prompt", None)
    batch = encode_pairs(tok, pairs, max_length=max_length, padding_side="right", system_prompt=system_prompt)
    device = next(model.parameters()).device
    batch = batch.to(device)
    tokens = AnswerTokens.from_labels(batch.labels)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    logits = logits.logits if hasattr(logits, "logits") else logits
    lp = sequence_logprobs(logits[tokens.rows, tokens.positions], tokens)
    lp_pos, lp_neg = lp[0:1], lp[1:2]
    if missing:
        util = utility_log_odds(lp_pos, torch.full_like(lp_neg, -math.inf)).item()
        return {"pref_log_odds": math.nan, "util_log_odds": util, "pref_acc": math.nan}
    pref = preference_log_odds(lp_pos, lp_neg).item()
    return {"pref_log_odds": pref, "util_log_odds": utility_log_odds(lp_pos, lp_neg).item(),
            "pref_acc": float(pref > 0)}


def add_log_odds_metrics(metrics: Sequence[dict], model: torch.nn.Module, tok: Any,
                         requests: Sequence[Mapping] | None = None, hparams: Any = None,
                         phase: str = "post") -> Sequence[dict]:
    """Add our keys to `metrics[i][phase]` for the model in its current state.

    Use it after `editor.edit(..., keep_original_weight=False)` (the edit persists) for
    "post", or before editing for "pre"; requests default to each case's `requested_rewrite`.
    """
    for i, case in enumerate(metrics):
        record = requests[i] if requests is not None else case.get("requested_rewrite")
        if record is None:
            raise ValueError(f"metrics[{i}] has no 'requested_rewrite'; pass requests=")
        case.setdefault(phase, {}).update(log_odds_metrics(model, tok, record, hparams))
    return metrics


# -- wrapping the host's evaluation ------------------------------------------------------------------------
def _wants(hparams: Any) -> bool:
    name = getattr(hparams, "alg_name", None)
    if name == "SPLIT":
        return bool(getattr(hparams, "log_odds_metrics", True))
    return _all_methods or name in _enabled


def wrap_compute_edit_quality(original):
    """The host's compute_edit_quality, plus our metrics for the methods enabled."""
    if getattr(original, "__split_plugin_wrapped__", None) is not None:
        return original

    @functools.wraps(original)
    def compute_edit_quality(model, model_name, hparams, tok, record, device, *args, **kwargs):
        result = original(model, model_name, hparams, tok, record, device, *args, **kwargs)
        if isinstance(result, dict) and _wants(hparams) and model is not None:
            try:
                result.update(log_odds_metrics(model, tok, record, hparams))
            except Exception as exc:  # never break another method's evaluation
                if getattr(hparams, "alg_name", None) == "SPLIT":
                    raise
                warnings.warn(f"log-odds metrics skipped for {getattr(hparams, 'alg_name', '?')}: {exc}",
                              stacklevel=2)
        return result

    compute_edit_quality.__split_plugin_wrapped__ = original
    return compute_edit_quality


def wrap_summary_metrics(original):
    """The git version's summary_metrics, also printing the means of our metrics."""
    if getattr(original, "__split_plugin_wrapped__", None) is not None:
        return original

    @functools.wraps(original)
    def summary_metrics(all_metrics, *args, **kwargs):
        result = original(all_metrics, *args, **kwargs)
        ours = summarize(all_metrics, host_keys=False, print_table=False)
        if any(ours[p] for p in ("pre", "post")):
            print("Log-odds Summary (split_plugin): ", {p: ours[p] for p in ("pre", "post")})
        return result

    summary_metrics.__split_plugin_wrapped__ = original
    return summary_metrics


def install(editor_module: Any) -> None:
    """Wrap the evaluation functions BaseEditor's module calls (idempotent)."""
    if hasattr(editor_module, "compute_edit_quality"):
        editor_module.compute_edit_quality = wrap_compute_edit_quality(editor_module.compute_edit_quality)
    if hasattr(editor_module, "summary_metrics"):
        editor_module.summary_metrics = wrap_summary_metrics(editor_module.summary_metrics)


def uninstall(editor_module: Any) -> None:
    for name in ("compute_edit_quality", "summary_metrics"):
        fn = getattr(editor_module, name, None)
        original = getattr(fn, "__split_plugin_wrapped__", None)
        if original is not None:
            setattr(editor_module, name, original)


def enable_log_odds_metrics(methods: str | Iterable[str] = ALL_METHODS) -> None:
    """Add our metrics to the host's evaluation of other methods too ("all", or names like "FT")."""
    global _all_methods
    if isinstance(methods, str):
        if methods == ALL_METHODS:
            _all_methods = True
            return
        methods = [methods]
    _enabled.update(methods)


def disable_log_odds_metrics(methods: str | Iterable[str] = ALL_METHODS) -> None:
    """Stop adding our metrics for other methods (SPLIT follows its `log_odds_metrics` field)."""
    global _all_methods
    if isinstance(methods, str):
        if methods == ALL_METHODS:
            _all_methods = False
            _enabled.intersection_update({"SPLIT"})
            return
        methods = [methods]
    _enabled.difference_update(set(methods) - {"SPLIT"})


# -- summaries -------------------------------------------------------------------------------------------
def _mean(values: list) -> float:
    flat = []
    for v in values:
        if isinstance(v, (list, tuple, np.ndarray)):
            flat.extend(np.asarray(v, dtype=float).ravel().tolist())
        elif isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
            flat.append(float(v))
    finite = [x for x in flat if not math.isnan(x)]
    return float(np.mean(finite)) if finite else math.nan


def summarize(metrics: Sequence[dict] | dict, host_keys: bool = True, print_table: bool = True,
              title: str | None = None) -> dict[str, Any]:
    """Means over cases of the host's metrics and ours, per phase ("pre", "post").

    Host metrics: rewrite_acc, rephrase_acc, rewrite_ppl and every `*_acc` under locality /
    portability (as `locality.<key>`). Ours: the means of pref_log_odds, util_log_odds and
    pref_acc over cases where they are defined, and `util_undefined`, the count of cases
    whose utility log-odds is undefined (the two answers hold >= all probability mass).
    """
    if isinstance(metrics, dict):
        metrics = [metrics]
    out: dict[str, Any] = {"cases": len(metrics)}
    for phase in ("pre", "post"):
        phase_out: dict[str, float] = {}
        cases = [m.get(phase, {}) for m in metrics if isinstance(m.get(phase), dict)]
        if host_keys:
            for key in HOST_KEYS:
                values = [c[key] for c in cases if key in c]
                if values:
                    phase_out[key] = _mean(values)
            for section in ("locality", "portability"):
                keys = sorted({k for c in cases for k in (c.get(section) or {}) if k.endswith("_acc")})
                for key in keys:
                    values = [c[section][key] for c in cases if key in (c.get(section) or {})]
                    phase_out[f"{section}.{key}"] = _mean(values)
        for key in METRIC_KEYS:
            values = [c[key] for c in cases if key in c]
            if values:
                phase_out[key] = _mean(values)
        util = [c["util_log_odds"] for c in cases if "util_log_odds" in c]
        if util:
            phase_out["util_undefined"] = int(sum(1 for u in util if math.isnan(u)))
        out[phase] = phase_out
    if print_table:
        print(format_table({title or "summary": out}))
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def format_table(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """One table: a row per method (or run), `pre -> post` for every metric any of them has."""
    keys: list[str] = []
    for summary in summaries.values():
        for phase in ("post", "pre"):
            for key in summary.get(phase, {}):
                if key not in keys:
                    keys.append(key)
    header = ["method", "cases"] + keys
    rows = []
    for name, summary in summaries.items():
        row = [name, str(summary.get("cases", ""))]
        for key in keys:
            pre, post = summary.get("pre", {}).get(key), summary.get("post", {}).get(key)
            row.append(f"{_fmt(pre)} -> {_fmt(post)}" if pre is not None else _fmt(post))
        rows.append(row)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(cell.ljust(w) for cell, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
