"""Importing EasyEdit2's `steer` package (from an EasyEdit checkout) and reaching its registries.

`steer.utils.alg_dict` holds the two registries every pipeline reads: HYPERPARAMS_CLASS_DICT
(alg_name -> {"train": hparams class, "apply": hparams class}) and METHODS_CLASS_DICT
(alg_name -> {"train": generator function, "apply": applier function}). At the git head
(since upstream commit 2fc52c7) that module imports ~40 names from `steer.vector_generators`
and `steer.vector_appliers`, whose `__init__` files export none, so `import steer.utils` fails
and no steer pipeline runs. `expose_packages()` is the opt-in repair: it gives the two packages
a module `__getattr__` that imports each name from the submodule defining it (the layout the
names came from), tolerating submodules whose optional packages (sae_lens, ...) are missing.
"""
from __future__ import annotations

import importlib
import re
import sys
import types
from pathlib import Path

from ..easyedit._host import _TolerantFinder, tolerant_import
from ..errors import SplitPluginError

INSTALL_HINT = ("put an EasyEdit checkout (the folder holding steer/) first on sys.path and install its steer "
                "dependencies into a separate folder: `pip install --target /tmp/steer-deps -r "
                "requirements-easyedit-steer.txt`, then PYTHONPATH=/tmp/steer-deps (see docs/EASYEDIT.md)")
PACKAGES = ("steer.vector_generators", "steer.vector_appliers")
_DEFINITION = re.compile(r"^(?:def|class) (\w+)", re.M)


def registries() -> types.ModuleType:
    """`steer.utils.alg_dict` (the registries), or a SplitPluginError saying how to get it."""
    try:
        return importlib.import_module("steer.utils.alg_dict")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "steer":
            raise SplitPluginError(f"EasyEdit2's `steer` package is not importable ({exc}); " + INSTALL_HINT) from exc
        raise SplitPluginError(f"importing EasyEdit2's steer/ needs the package {exc.name!r}; " + INSTALL_HINT) from exc
    except ImportError as exc:
        if any(pkg in str(exc) for pkg in PACKAGES):
            raise SplitPluginError(
                f"this EasyEdit's steer/utils/alg_dict.py cannot import ({exc}): its vector_generators/ and "
                "vector_appliers/ packages export nothing (upstream defect since commit 2fc52c7). Call "
                "split_plugin.easyedit2.register(repair=True) to expose their submodules' names, or use "
                "a checkout where steer/utils/alg_dict.py imports") from exc
        raise SplitPluginError(f"importing steer.utils.alg_dict failed: {exc}; " + INSTALL_HINT) from exc


def expose_packages() -> list[str]:
    """Give each of PACKAGES a `__getattr__` resolving its submodules' names; returns the ones changed."""
    changed = []
    for name in PACKAGES:
        try:
            package = importlib.import_module(name)
        except ImportError as exc:
            raise SplitPluginError(f"cannot import {name}: {exc}; " + INSTALL_HINT) from exc
        if "__getattr__" in vars(package):
            continue
        index = _definitions(package)
        package.__getattr__ = _resolver(name, index)
        changed.append(name)
    return changed


def _definitions(package: types.ModuleType) -> dict[str, str]:
    """Top-level def/class name -> the dotted submodule that defines it (first found, sorted by path)."""
    root = Path(package.__path__[0])
    index: dict[str, str] = {}
    for path in sorted(root.rglob("*.py")):
        module = ".".join((package.__name__, *path.relative_to(root).with_suffix("").parts))
        for found in _DEFINITION.findall(path.read_text(encoding="utf-8", errors="replace")):
            index.setdefault(found, module.removesuffix(".__init__"))
    return index


def _resolver(package: str, index: dict[str, str]):
    finder = _TolerantFinder(prefix="steer.", packages=frozenset(), modules=(), methods=(f"{package}.",))

    def __getattr__(attr: str):
        if attr not in index:
            raise AttributeError(f"module {package!r} has no attribute {attr!r}")
        with tolerant_import(finder):
            module = importlib.import_module(index[attr])
        return getattr(module, attr)

    return __getattr__


def is_repaired() -> bool:
    """Whether expose_packages() has given both packages their name resolver."""
    return all("__getattr__" in vars(sys.modules.get(n, types.ModuleType(n))) for n in PACKAGES)
