"""SPLIT as an EasyEdit (`easyeditor`) editing method.

    import split_plugin.easyedit                    # registers "SPLIT" with the host
    from split_plugin.easyedit import SPLITHyperParams
    from easyeditor import BaseEditor

    hparams = SPLITHyperParams.from_hparams("hparams/SPLIT/smollm2-135m-instruct.yaml")
    editor = BaseEditor.from_hparams(hparams)
    metrics, model, weights_copy = editor.edit(prompts=..., target_new=..., ground_truth=...)

Importing this module imports easyeditor (importing `split_plugin` alone never does) and
calls `register()`. Works with the PyPI wheel 0.0.1.dev0 and the EasyEdit repository's
easyeditor; `host_info()` says which one is in use. On a CPU-only machine run the wheel's
code inside `cpu_fallback()` (it hard-codes `cuda:{device}`).
"""
from __future__ import annotations

from typing import Any

from ._host import (
    STUBBED,
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
    reset_warnings,
    undo_edits,
)
from .hparams import EMBEDDED_MODEL_NAME, PreloadedModel, SPLITHyperParams, preloaded
from .metrics import (
    METRIC_KEYS,
    add_log_odds_metrics,
    disable_log_odds_metrics,
    enable_log_odds_metrics,
    format_table,
    log_odds_metrics,
    summarize,
)
from . import metrics as _metrics
from .hparams import _HOST

ALG_NAME = "SPLIT"
#: the host's editor class, for `from split_plugin.easyedit import BaseEditor`
BaseEditor = _HOST.editor.BaseEditor

__all__ = [
    "ALG_NAME",
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
    "disable_log_odds_metrics",
    "enable_log_odds_metrics",
    "format_table",
    "host_info",
    "import_easyeditor",
    "log_odds_metrics",
    "negative_answer",
    "preloaded",
    "register",
    "requests_to_pairs",
    "reset_warnings",
    "summarize",
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
    - wraps the editor module's compute_edit_quality (and git's summary_metrics) so SPLIT's
      per-case metrics gain pref_log_odds / util_log_odds / pref_acc
    `host` defaults to the installed easyeditor; tests pass small fakes.
    """
    modules = host or _HOST
    info = detect_host(modules)
    registry = modules.alg_dict.ALG_DICT
    registry[ALG_NAME] = apply_split_to_model
    editor_registry = getattr(modules.editor, "ALG_DICT", None)
    if editor_registry is not None and editor_registry is not registry:
        editor_registry[ALG_NAME] = apply_split_to_model
    _batchable(modules.batch_editor)
    if info.callable_restore_algs is not None:
        info.callable_restore_algs.add(ALG_NAME)
    _metrics.install(modules.editor)
    return info


def host_info() -> HostInfo:
    """Which easyeditor is installed (flavor "wheel" or "git") and how it restores models."""
    return detect_host(_HOST)


register()
