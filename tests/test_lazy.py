"""Lazy package attributes: every public name resolves, and `import split_plugin` stays light."""
import subprocess
import sys
import types

import pytest

import split_plugin as sp
import split_plugin.analysis as an


@pytest.mark.parametrize("package", [sp, an], ids=lambda p: p.__name__)
def test_every_public_name_resolves_to_what_it_names(package):
    for name in package.__all__:
        value = getattr(package, name)
        assert not isinstance(value, types.ModuleType), name
        assert name in dir(package)
        if callable(value) and hasattr(value, "__module__"):
            assert value.__module__.startswith("split_plugin"), (name, value.__module__)


def test_top_level_analysis_names_are_the_analysis_packages_own():
    for name in ("Evaluation", "SweepResult", "evaluate", "sweep", "write_report"):
        assert name in sp.__all__ and getattr(sp, name) is getattr(an, name)


@pytest.mark.parametrize("package", [sp, an], ids=lambda p: p.__name__)
def test_an_unknown_name_is_an_attribute_error(package):
    with pytest.raises(AttributeError, match=f"module '{package.__name__}' has no attribute 'no_such_name'"):
        package.no_such_name  # noqa: B018


def test_importing_the_package_imports_nothing_heavy():
    code = ("import sys, split_plugin, split_plugin.analysis; "
            "print(sorted(m for m in ('torch', 'transformers', 'matplotlib', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
