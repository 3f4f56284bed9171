"""SPLIT as an EasyEdit (`easyeditor`) editing method.

    import split_plugin.easyedit                    # registers "SPLIT" with the host
    from split_plugin.easyedit import SPLITHyperParams
    from easyeditor import BaseEditor

    hparams = SPLITHyperParams.from_hparams("smollm2-135m-instruct")  # a shipped YAML, or a path
    editor = BaseEditor.from_hparams(hparams)
    metrics, model, weights_copy = editor.edit(prompts=..., target_new=..., ground_truth=...)

Importing this module imports easyeditor (importing `split_plugin` alone never does) and
calls `register()`. Works with the PyPI wheel 0.0.1.dev0 and the EasyEdit repository's
easyeditor; `host_info()` says which one is in use. On a CPU-only machine run the wheel's
code inside `cpu_fallback()` (it hard-codes `cuda:{device}`; with the git version it does nothing).
"""
from __future__ import annotations

import logging
import sys
from typing import Any

from ._host import (
    HostInfo,
    HostModules,
    cpu_fallback,
    detect_host,
    import_easyeditor,
    load_host_modules,
)
from .apply import (
    SplitWeightsCopy,
    active_edits,
    apply_split_to_model,
    negative_answer,
    requests_to_pairs,
    undo_edits,
)
from .hparams import EMBEDDED_MODEL_NAME, PreloadedModel, SPLITHyperParams, preloaded, shipped_configs
from .metrics import (
    ALL_KEYS,
    METRIC_KEYS,
    add_log_odds_metrics,
    format_table,
    log_odds_metrics,
    summarize,
    summary_metrics,
)
from . import metrics as _metrics

ALG_NAME = "SPLIT"

__all__ = [
    "ALG_NAME",
    "ALL_KEYS",
    "BaseEditor",
    "EMBEDDED_MODEL_NAME",
    "METRIC_KEYS",
    "HostInfo",
    "HostModules",
    "PreloadedModel",
    "SPLITHyperParams",
    "SplitWeightsCopy",
    "active_edits",
    "add_log_odds_metrics",
    "apply_split_to_model",
    "cpu_fallback",
    "detect_host",
    "format_table",
    "host_info",
    "import_easyeditor",
    "log_odds_metrics",
    "negative_answer",
    "preloaded",
    "register",
    "requests_to_pairs",
    "shipped_configs",
    "summarize",
    "summary_metrics",
    "undo_edits",
]


def _batchable(batch_editor: Any) -> None:
    """Make BatchEditor.is_batchable_method say yes for SPLIT (wraps the Enum's staticmethod once)."""
    current = batch_editor.__dict__.get("is_batchable_method")
    func = current.__func__ if isinstance(current, staticmethod) else current
    if func is None or getattr(func, "__split_plugin_original__", None) is not None:
        return

    def is_batchable_method(alg_name: str) -> bool:
        return alg_name == ALG_NAME or func(alg_name)

    is_batchable_method.__split_plugin_original__ = func
    is_batchable_method.__doc__ = func.__doc__
    setattr(batch_editor, "is_batchable_method", staticmethod(is_batchable_method))


def register(host: HostModules | None = None) -> HostInfo:
    """Register SPLIT with the host (idempotent); returns what was detected about the host.

    - adds "SPLIT" to the host's ALG_DICT (the same dict object BaseEditor reads; never rebound)
    - makes BatchEditor.is_batchable_method accept SPLIT (for `batch_edit`)
    - git version: adds "SPLIT" to CALLABLE_RESTORE_ALGS, so a non-sequential edit is undone
      by calling weights_copy()
    - points the host's compute_edit_quality at a wrapper adding our metrics for every method,
      and its summary_metrics (git version) at ours, which reports our keys too
    - stops the editor's log lines from reaching the root logger too (they printed twice)
    `host` defaults to the installed easyeditor; tests pass small fakes (whose evaluation
    functions are left alone).
    """
    modules = host or load_host_modules()
    info = detect_host(modules)
    if host is None and "easyeditor.models.split" in sys.modules:
        return info  # this EasyEdit has SPLIT built in (split_plugin.easyedit.contrib): nothing to patch
    registry = modules.alg_dict.ALG_DICT
    registry[ALG_NAME] = apply_split_to_model
    editor_registry = getattr(modules.editor, "ALG_DICT", None)
    if editor_registry is not None and editor_registry is not registry:
        editor_registry[ALG_NAME] = apply_split_to_model
    _batchable(modules.batch_editor)
    if info.callable_restore_algs is not None:
        info.callable_restore_algs.add(ALG_NAME)
    if host is None:
        _metrics.install()
        # BaseEditor adds its own stream handler to this logger and the host's basicConfig one to
        # the root logger: without this, every INFO line of the host prints twice
        logging.getLogger(modules.editor.__name__).propagate = False
    return info


def host_info() -> HostInfo:
    """Which easyeditor is installed (flavor "wheel" or "git") and how it restores models."""
    return detect_host(load_host_modules())


def __getattr__(name: str):
    if name == "BaseEditor":  # the host's editor class: `from split_plugin.easyedit import BaseEditor`
        return load_host_modules().editor.BaseEditor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _host_is_importing() -> bool:
    """True while easyeditor itself is being imported: it imported us (an upstream `models/split`)."""
    host = sys.modules.get("easyeditor")
    return host is not None and not hasattr(host, "BaseEditor")


if not _host_is_importing():
    register()
