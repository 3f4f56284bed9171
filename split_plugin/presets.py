"""Training presets for the embedded model, shipped inside the package (hparams/ links to them)."""
from __future__ import annotations

from pathlib import Path

from .errors import SplitPluginError

PRESETS_DIR = Path(__file__).resolve().parent / "presets" / "smollm2-135m-instruct"


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The YAML of a preset such as 'split-vector' (method-form) for SmolLM2-135M-Instruct."""
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise SplitPluginError(f"no preset named {name!r}; the presets are {list_presets()}")
    return path
