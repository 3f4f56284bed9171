"""Log-odds metrics for every EasyEdit method, next to the host's own, in the host's format.

For each case, scored teacher-forced in the format the host evaluates (`prompt + " " + answer`,
through the chat template when the hyperparameters set `use_chat_template`), with sequence
sums of log-probabilities:
- `pref_log_odds` = log P(target_new | prompt) - log P(negative | prompt), the negative being
  target_neg, else ground_truth; `pref_acc` = 1.0 if it is > 0 else 0.0
- `util_log_odds` = log[(p_new + p_neg) / (1 - p_new - p_neg)]; NaN where undefined
- `rephrase_pref_log_odds` / `rephrase_pref_acc`: the same on the rephrase prompt(s)
  (generalisation)
- `locality_log_odds` = log P(locality answer | locality prompt) - log P(target_new | locality
  prompt), averaged over locality prompts; `locality_pref_acc` the share > 0 (specificity:
  the edit must not leak there)
Without a negative answer `pref_*` are NaN and `util_log_odds` is the positive's log-odds.

`install()` makes the host's evaluation add these keys (and, on the git version, a
`metric_meta` entry each) and replaces the host's `summary_metrics` with ours, which prints
and writes the same summary with our keys in it.
"""
from __future__ import annotations

import functools
import json
import math
import os
import sys
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..data import ContrastivePair
from ..fileio import atomic_write_text
from ..objectives import preference_log_odds, utility_log_odds
from ..scoring import pair_logprobs
from .apply import requests_to_pairs

METRIC_KEYS = ("pref_log_odds", "util_log_odds", "pref_acc")
REPHRASE_KEYS = ("rephrase_pref_log_odds", "rephrase_pref_acc")
LOCALITY_KEYS = ("locality_log_odds", "locality_pref_acc")
ALL_KEYS = METRIC_KEYS + REPHRASE_KEYS + LOCALITY_KEYS
HOST_KEYS = ("rewrite_acc", "rephrase_acc", "rewrite_ppl", "ood_acc")
#: the git version's metric_meta protocol of our keys
PROTOCOL = "teacher_forcing_sequence_log_odds"


# -- computing -------------------------------------------------------------------------------------------
def host_format(hparams: Any) -> str:
    """The data.PROMPT_FORMATS entry the host scores in for these hyperparameters."""
    return "chat_plain" if getattr(hparams, "use_chat_template", False) else "plain"


def _texts(value: Any) -> list[str]:
    values = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in values if isinstance(v, str) and v.strip()]


def _mean_pref(lp_pos: torch.Tensor, lp_neg: torch.Tensor) -> tuple[float, float]:
    pref = preference_log_odds(lp_pos, lp_neg)
    return pref.mean().item(), (pref > 0).float().mean().item()


@torch.no_grad()
def log_odds_metrics(model: torch.nn.Module, tok: Any, record: Mapping, hparams: Any = None) -> dict[str, float]:
    """Our metrics for one request on the model as it is now (hooks included)."""
    fmt, max_length = host_format(hparams), getattr(hparams, "train_max_length", None) or 256
    (pair,), missing = requests_to_pairs([record])
    lp_pos, lp_neg = pair_logprobs(model, tok, [pair], fmt, max_length)
    if missing:
        util = utility_log_odds(lp_pos, torch.full_like(lp_neg, -math.inf)).item()
        out = {"pref_log_odds": math.nan, "util_log_odds": util, "pref_acc": math.nan}
    else:
        pref, acc = _mean_pref(lp_pos, lp_neg)
        out = {"pref_log_odds": pref, "util_log_odds": utility_log_odds(lp_pos, lp_neg).item(), "pref_acc": acc}
    rephrases = _texts(record.get("rephrase_prompt"))
    if rephrases and not missing:
        pairs = [ContrastivePair(question=q, positive=pair.positive, negative=pair.negative) for q in rephrases]
        out["rephrase_pref_log_odds"], out["rephrase_pref_acc"] = _mean_pref(
            *pair_logprobs(model, tok, pairs, fmt, max_length))
    pairs = []
    for section in (record.get("locality") or {}).values():
        if not isinstance(section, Mapping):
            continue
        for prompt, answer in zip(_texts(section.get("prompt")), _texts(section.get("ground_truth"))):
            if answer.strip() != pair.positive.strip():
                pairs.append(ContrastivePair(question=prompt, positive=answer, negative=pair.positive))
    if pairs:
        out["locality_log_odds"], out["locality_pref_acc"] = _mean_pref(*pair_logprobs(model, tok, pairs, fmt, max_length))
    return out


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


def _attach_meta(result: dict, hparams: Any) -> None:
    """One metric_meta entry, "log_odds", for the keys we added, where the host keeps metric_meta (git)."""
    attach = getattr(sys.modules.get("easyeditor.evaluate.metric_meta"), "attach_metric_meta", None)
    keys = [key for key in ALL_KEYS if key in result]
    if attach is not None and keys:
        attach(result, "log_odds", {"result_key": ",".join(keys), "protocol": PROTOCOL, "scorer": "log_odds",
                                    "comparable_group": f"lm.{host_format(hparams)}.{PROTOCOL}"})


def add_log_odds_to_result(result: dict, model: torch.nn.Module, tok: Any, record: Mapping, hparams: Any) -> dict:
    """Add our metrics to one compute_edit_quality result, with their metric_meta (git version)."""
    result.update(log_odds_metrics(model, tok, record, hparams))
    _attach_meta(result, hparams)
    return result


# -- inside the host's evaluation -----------------------------------------------------------------------------
def wrap_compute_edit_quality(original):
    """The host's compute_edit_quality, plus our metrics for every method (SPLIT: if log_odds_metrics)."""
    if getattr(original, "__split_plugin_wrapped__", None) is not None:
        return original

    @functools.wraps(original)
    def compute_edit_quality(model, model_name, hparams, tok, record, device, *args, **kwargs):
        result = original(model, model_name, hparams, tok, record, device, *args, **kwargs)
        is_split = getattr(hparams, "alg_name", None) == "SPLIT"
        if not isinstance(result, dict) or model is None or (is_split and not getattr(hparams, "log_odds_metrics", True)):
            return result
        try:
            add_log_odds_to_result(result, model, tok, record, hparams)
        except Exception as exc:  # never break another method's evaluation
            if is_split:
                raise
            warnings.warn(f"log-odds metrics skipped for {getattr(hparams, 'alg_name', '?')}: {exc}", stacklevel=2)
        return result

    compute_edit_quality.__split_plugin_wrapped__ = original
    return compute_edit_quality


def summary_metrics(all_metrics: Sequence[dict] | dict, logs_dir: str = "./logs") -> dict[str, Any]:
    """The host's summary with our keys: writes `logs_dir/results.json`, prints and returns the means.

    Means per phase of the host's keys (rewrite_acc, rephrase_acc, rewrite_ppl, ood_acc, each
    locality / portability `*_acc`) and ours, as `summarize()` computes them; on the git version
    also its metric-protocol summary, as the host's own summary_metrics reports it.
    """
    if isinstance(all_metrics, dict):
        all_metrics = [all_metrics]
    os.makedirs(logs_dir, exist_ok=True)
    atomic_write_text(os.path.join(logs_dir, "results.json"),
                      json.dumps(all_metrics, ensure_ascii=False, indent=4, default=_json_default))
    summary = summarize(all_metrics, print_table=False)
    means: dict[str, Any] = {phase: summary[phase] for phase in ("pre", "post")}
    protocols = getattr(sys.modules.get("easyeditor.editors.utils"), "get_metric_protocol_summary", None)
    if protocols is not None and protocols(all_metrics):
        means["metric_protocols"] = protocols(all_metrics)
        print("Metric Protocol Summary: ", means["metric_protocols"])
    print("Metrics Summary: ", means)
    return means


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic, torch.Tensor)):
        return value.tolist() if hasattr(value, "tolist") else value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _wrap_summary_metrics(original):
    """Our summary_metrics in place of the host's (which stays reachable as __split_plugin_wrapped__)."""
    @functools.wraps(original)
    def wrapper(all_metrics, *args, **kwargs):
        return summary_metrics(all_metrics)

    wrapper.__split_plugin_wrapped__ = original
    return wrapper


WRAPPERS = {"compute_edit_quality": wrap_compute_edit_quality, "summary_metrics": _wrap_summary_metrics}


def install() -> int:
    """Point the imported host at our evaluation wrappers (idempotent); returns how many names moved.

    Every `easyeditor.*` module that holds the host's `compute_edit_quality` gets the wrapper,
    and every one that holds its `summary_metrics` (the editor module, `easyeditor` itself for
    `from easyeditor import summary_metrics`, ...) gets ours; one wrapper per host function,
    kept on that function. `uninstall()` puts the host's own back.
    """
    moved = 0
    for module in _host_modules():
        for name, make in WRAPPERS.items():
            current = module.__dict__.get(name)
            if not callable(current) or hasattr(current, "__split_plugin_wrapped__"):
                continue
            wrapper = getattr(current, "__split_plugin_wrapper__", None)
            if wrapper is None:
                wrapper = current.__split_plugin_wrapper__ = make(current)
            setattr(module, name, wrapper)
            moved += 1
    return moved


def uninstall() -> int:
    """Give the host its own evaluation functions back; returns how many names moved."""
    moved = 0
    for module in _host_modules():
        for name in WRAPPERS:
            original = getattr(module.__dict__.get(name), "__split_plugin_wrapped__", None)
            if original is not None:
                setattr(module, name, original)
                moved += 1
    return moved


def _host_modules() -> list:
    return [m for name, m in list(sys.modules.items())
            if m is not None and (name == "easyeditor" or name.startswith("easyeditor."))]


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

    Host metrics: rewrite_acc, rephrase_acc, rewrite_ppl, ood_acc and every `*_acc` under
    locality / portability (as `locality.<key>`). Ours: the means of our keys over cases where
    they are defined, and `util_undefined`, the count of cases whose utility log-odds is
    undefined (the two answers hold >= all probability mass).
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
        for key in ALL_KEYS:
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
