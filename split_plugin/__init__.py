"""split-plugin: SPLIT steering and the unified "control = dynamic weight update" view.

Importing this package never imports easyeditor; `import split_plugin.easyedit` does.
"""
from .errors import SplitPluginError
from .intervention import FORMS, Intervention, InterventionConfig, InterventionHandle
from .layers import ArchSpec, ModelLayout, resolve_layout
from .serialization import export_peft, import_peft, import_reference
from .version import __version__

__all__ = [
    "FORMS",
    "ArchSpec",
    "Intervention",
    "InterventionConfig",
    "InterventionHandle",
    "ModelLayout",
    "SplitPluginError",
    "__version__",
    "export_peft",
    "import_peft",
    "import_reference",
    "resolve_layout",
]
