"""split-plugin: SPLIT steering and the unified "control = dynamic weight update" view.

    import split_plugin as sp
    model, tok = sp.load_default_model()
    vector = sp.train(model, tok, sp.load_pairs("power-seeking"), sp.preset_path("split-vector"))
    with vector.apply(model, multiplier=8.0):
        ...

Importing this package never imports easyeditor; `import split_plugin.easyedit` does.
"""
from typing import Any

from .config import TrainConfig
from .data import ContrastivePair, encode_pairs, list_datasets, load_heldout_text, load_pairs
from .errors import SplitPluginError
from .generate import generate
from .intervention import FORMS, Intervention, InterventionConfig, InterventionHandle
from .layers import ArchSpec, ModelLayout, resolve_layout
from .models import load_default_model, load_default_tokenizer, load_model
from .presets import list_presets, preset_path
from .serialization import export_peft, import_peft, import_reference
from .trainer import train
from .version import __version__

_LAZY = {"sweep": "split_plugin.analysis.sweep", "SweepResult": "split_plugin.analysis.result",
         "write_report": "split_plugin.analysis.report"}


def __getattr__(name: str) -> Any:
    """The analysis API loads on first use (it pulls in scipy and matplotlib)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'split_plugin' has no attribute {name!r}")


__all__ = [
    "FORMS",
    "ArchSpec",
    "ContrastivePair",
    "Intervention",
    "InterventionConfig",
    "InterventionHandle",
    "ModelLayout",
    "SplitPluginError",
    "SweepResult",
    "TrainConfig",
    "__version__",
    "encode_pairs",
    "export_peft",
    "generate",
    "import_peft",
    "import_reference",
    "list_datasets",
    "list_presets",
    "load_default_model",
    "load_default_tokenizer",
    "load_heldout_text",
    "load_model",
    "load_pairs",
    "preset_path",
    "resolve_layout",
    "sweep",
    "train",
    "write_report",
]
