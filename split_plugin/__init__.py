"""split-plugin: SPLIT steering and the unified "control = dynamic weight update" view.

    import split_plugin as sp
    model, tok = sp.load_default_model()
    vector = sp.train(model, tok, sp.load_pairs("power-seeking"), sp.preset_path("split-vector"))
    with vector.steer(model, multiplier=8.0):
        ...

Importing this package never imports easyeditor; `import split_plugin.easyedit` does.
"""

from .errors import SplitPluginError
from .lazy import lazy_attributes
from .version import __version__

# Everything else loads on first use, so `import split_plugin` (and `split-steer --help`) does
# not pay for torch and transformers until an attribute needs them. This table is the one list of
# public names (__all__ is built from it); the analysis names defer to split_plugin.analysis's table.
_LAZY = {  # public name -> the submodule defining it
    "push_to_hub": "card",
    "Composition": "composition", "compose": "composition",
    "TrainConfig": "config",
    "ContrastivePair": "data", "encode_pairs": "data", "list_datasets": "data",
    "load_heldout_text": "data", "load_pairs": "data",
    "export": "exports",
    "PERSONA_FORMATS": "formats", "format_sets": "formats", "reformat": "formats", "vary_formats": "formats",
    "generate": "generation",
    "FORMS": "intervention", "Intervention": "intervention", "InterventionConfig": "intervention",
    "InterventionHandle": "intervention",
    "ArchSpec": "layers", "ModelLayout": "layers", "resolve_layout": "layers",
    "load_default_model": "models", "load_default_tokenizer": "models", "load_model": "models",
    "list_presets": "presets", "preset_path": "presets",
    "export_peft": "serialization", "import_peft": "serialization", "import_reference": "serialization",
    "train": "trainer",
    "Evaluation": "analysis", "SweepResult": "analysis", "evaluate": "analysis", "sweep": "analysis",
    "write_report": "analysis",
}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)

__all__ = sorted(["SplitPluginError", "__version__", *_LAZY])
