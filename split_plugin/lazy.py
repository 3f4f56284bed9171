"""Lazy package attributes: a package's public names load their module on first use.

`import split_plugin` and `split-steer --help` then cost milliseconds instead of torch's and
matplotlib's import time.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_attributes(package: str, names: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list]]:
    """(__getattr__, __dir__) for `package`, where `names` maps each public name to its submodule."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{names[name]}"), name)
        namespace[name] = value  # later lookups skip this function
        return value

    def __dir__() -> list:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
