"""Importing EasyEdit (`easyeditor`) and telling its two versions apart.

- `import_easyeditor()` imports the host. `import easyeditor` imports every editing method and
  the multimodal code; the multimodal submodules need timm / torchvision / opencv / av /
  qwen_vl_utils, which may be missing (no build matches a CPU-only modern torch). Only while
  our import runs, and only for modules inside `easyeditor.`, a module whose import fails on
  one of those packages is kept as a stub whose names raise a clear error when used. So is a
  module of another editing method (`easyeditor.models.*`) that fails to import for any reason
  (a missing API client, a transformers release without a module it imports), with a warning
  naming it. Every other missing package is an error naming the pip install.
- `detect_host()` tells the PyPI wheel (`edit(..., keep_original_weight=...)`, restores by
  writing `weights_copy.items()` back) from the git version (`edit(..., target_neg=...,
  sequential_edit=...)`, restores `CALLABLE_RESTORE_ALGS` by calling `weights_copy()`).
- `cpu_fallback()` runs the wheel's code, which hard-codes `cuda:N` devices, on a CPU-only
  machine; with the git version (which takes `device: cpu`) it does nothing.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.util
import inspect
import sys
import types
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch.overrides import TorchFunctionMode

from ..errors import SplitPluginError

#: packages only EasyEdit's multimodal code needs; their absence is tolerated on import
MULTIMODAL_ONLY = frozenset({"timm", "torchvision", "cv2", "av", "qwen_vl_utils", "decord", "iopath"})
#: the host's multimodal subpackages: any missing package is tolerated inside them
MULTIMODAL_MODULES = ("easyeditor.trainer.blip2_models.", "easyeditor.dataset.processor.")
#: other editing methods' implementations: SPLIT needs none of them, so any import failure inside
#: one (the git version's DeepEdit-API needs `zhipuai`; its UnKE imports
#: `transformers.modeling_attn_mask_utils`, which transformers 5.24 lacks) leaves that method
#: unusable, with a warning, instead of making easyeditor unimportable
METHOD_MODULES = ("easyeditor.models.",)
INSTALL_HINT = ("install the host's runtime dependencies with "
                "`pip install --no-deps easyeditor==0.0.1.dev0 && pip install -r requirements-easyedit.txt` "
                "(PyPI wheel) or `pip install -r requirements.txt` in the EasyEdit checkout (git version)")


# -- importing ------------------------------------------------------------------------------------
class _MissingOptionalError(ModuleNotFoundError):
    """Raised when stubbed multimodal code is used."""


def _missing_root(exc: BaseException) -> str | None:
    name = getattr(exc, "name", None)
    return name.split(".")[0] if name else None


def _placeholder(module_name: str, attr: str, missing: str, reason: str | None = None) -> type:
    message = (f"{module_name}.{attr} is unavailable: " + reason if reason else
               f"{module_name}.{attr} is unavailable: it needs the optional package {missing!r} "
               "(EasyEdit's multimodal code), which is not installed")

    class _Missing:
        def __init__(self, *args, **kwargs):
            raise _MissingOptionalError(message, name=missing)

        def __init_subclass__(cls, **kwargs):
            raise _MissingOptionalError(message, name=missing)

    _Missing.__name__ = _Missing.__qualname__ = attr
    return _Missing


def _make_stub(module: types.ModuleType, missing: str, reason: str | None = None) -> None:
    """Keep what the module defined before it failed; any other name becomes a placeholder."""
    name = module.__name__

    def __getattr__(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _placeholder(name, attr, missing, reason)

    module.__getattr__ = __getattr__
    module.__split_plugin_stub__ = missing  # the record of what was missing, on the module itself


class _TolerantLoader(importlib.abc.Loader):
    """Wraps a loader of an `easyeditor.*` module; multimodal-only import failures make a stub."""

    def __init__(self, loader, packages: frozenset[str], modules: tuple[str, ...],
                 methods: tuple[str, ...] = (), skipped: dict[str, str] | None = None):
        self._loader, self._packages, self._modules = loader, packages, modules
        self._methods, self._skipped = methods, skipped if skipped is not None else {}

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        try:
            self._loader.exec_module(module)
        except ImportError as exc:
            missing = _missing_root(exc)
            in_multimodal = (module.__name__ + ".").startswith(self._modules)
            if missing is not None and (missing in self._packages or in_multimodal):
                _make_stub(module, missing)
                return
            if not (module.__name__ + ".").startswith(self._methods):
                raise
            # another editing method's code does not import here: only that method is lost
            reason = f"importing it failed here ({type(exc).__name__}: {exc})"
            _make_stub(module, missing or "?", reason)
            self._skipped[module.__name__] = str(exc)

    def __getattr__(self, name):  # get_source, get_resource_reader, ...
        return getattr(self._loader, name)


class _TolerantFinder(importlib.abc.MetaPathFinder):
    """Hands out tolerant loaders for the modules of one package while it is imported."""

    def __init__(self, prefix: str = "easyeditor.", packages: frozenset[str] = MULTIMODAL_ONLY,
                 modules: tuple[str, ...] = MULTIMODAL_MODULES, methods: tuple[str, ...] = METHOD_MODULES):
        self.prefix, self.packages, self.modules, self.methods = prefix, packages, modules, methods
        #: method modules stubbed because they failed to import: name -> the error
        self.skipped: dict[str, str] = {}

    def find_spec(self, fullname, path, target=None):
        if not fullname.startswith(self.prefix):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _TolerantLoader(spec.loader, self.packages, self.modules, self.methods, self.skipped)
        return spec


@contextlib.contextmanager
def tolerant_import(finder: _TolerantFinder | None = None) -> Iterator[_TolerantFinder]:
    """While active, modules under `finder.prefix` that fail on multimodal-only packages become stubs."""
    finder = finder or _TolerantFinder()
    sys.meta_path.insert(0, finder)
    try:
        yield finder
    finally:
        sys.meta_path.remove(finder)


def import_easyeditor() -> types.ModuleType:
    """Import the host package (tolerating missing multimodal-only packages and other methods' failures)."""
    module = sys.modules.get("easyeditor")
    if module is not None and hasattr(module, "BaseEditor"):
        return module
    try:
        with tolerant_import() as finder:
            module = importlib.import_module("easyeditor")
    except ModuleNotFoundError as exc:
        root = exc.name.split(".")[0] if exc.name else None
        if root == "easyeditor":
            raise SplitPluginError(
                "EasyEdit (the `easyeditor` package) is not installed; " + INSTALL_HINT) from exc
        if root and root != exc.name and importlib.util.find_spec(root) is not None:
            version = getattr(sys.modules.get(root), "__version__", "")
            raise SplitPluginError(
                f"importing easyeditor failed: it imports {exc.name!r}, which the installed {root} "
                f"{version} does not have (this easyeditor expects another {root} version); "
                + INSTALL_HINT) from exc
        raise SplitPluginError(
            f"importing easyeditor failed: it needs the package {exc.name!r}, which is not installed; "
            + INSTALL_HINT) from exc
    except ImportError as exc:
        raise SplitPluginError(
            f"importing easyeditor failed: {exc}. The installed packages do not match what this "
            "easyeditor imports; " + INSTALL_HINT) from exc
    if finder.skipped:
        lines = "; ".join(f"{name}: {error}" for name, error in sorted(finder.skipped.items()))
        warnings.warn(f"easyeditor imported without these modules of other editing methods (those "
                      f"methods are unusable here; SPLIT is unaffected): {lines}", UserWarning, stacklevel=2)
    return module


# -- the host's modules and version ------------------------------------------------------------------
@dataclass
class HostModules:
    """The parts of the host we touch (real modules, or small fakes in tests)."""

    alg_dict: Any            # module holding the ALG_DICT registry
    editor: Any              # module of BaseEditor (its globals: ALG_DICT, compute_edit_quality, ...)
    batch_editor: Any        # the BatchEditor Enum
    utils: Any = None        # git: easyeditor.editors.utils (CALLABLE_RESTORE_ALGS); wheel: None
    hparams_base: Any = None  # the HyperParams base class


def load_host_modules() -> HostModules:
    """The real host's modules (imports easyeditor)."""
    import_easyeditor()
    alg_dict = importlib.import_module("easyeditor.util.alg_dict")
    editor = importlib.import_module("easyeditor.editors.editor")
    batch = importlib.import_module("easyeditor.editors.batch_editor")
    try:
        utils = importlib.import_module("easyeditor.editors.utils")
    except ImportError:
        utils = None
    base = importlib.import_module("easyeditor.util.hparams").HyperParams
    return HostModules(alg_dict=alg_dict, editor=editor, batch_editor=batch.BatchEditor,
                       utils=utils, hparams_base=base)


WHEEL_MODEL_KEYWORDS = ("t5", "gpt-3.5", "gpt", "llama", "baichuan", "chatglm", "internlm")
GIT_MODEL_KEYWORDS = WHEEL_MODEL_KEYWORDS + ("qwen2", "qwen3", "qwen", "mistral")


def imported_host_model_keywords() -> tuple[str, ...]:
    """The model-name keywords of the easyeditor already imported (the wheel's when none is)."""
    return GIT_MODEL_KEYWORDS if "sequential_edit" in imported_edit_params() else WHEEL_MODEL_KEYWORDS


@dataclass(frozen=True)
class HostInfo:
    """What differs between the host versions, as far as the adapter is concerned."""

    flavor: str                       # "wheel" (PyPI 0.0.1.dev0) or "git" (the repository's easyeditor)
    edit_params: tuple[str, ...]      # BaseEditor.edit's parameter names
    restore: str                      # "items": weights_copy.items() write-back; "callable": weights_copy()
    callable_restore_algs: Any = field(default=None, compare=False)  # git's mutable set, else None
    path: str | None = None           # where the host was imported from

    @property
    def takes_target_neg(self) -> bool:
        return "target_neg" in self.edit_params

    @property
    def model_keywords(self) -> tuple[str, ...]:
        """Substrings of `model_name` for which BaseEditor loads the model itself."""
        return GIT_MODEL_KEYWORDS if self.flavor == "git" else WHEEL_MODEL_KEYWORDS


def detect_host(modules: HostModules) -> HostInfo:
    """Tell the wheel from the git version by BaseEditor.edit's signature and the restore set."""
    editor_cls = getattr(modules.editor, "BaseEditor", None)
    if editor_cls is None or not hasattr(editor_cls, "edit"):
        raise SplitPluginError("this easyeditor has no BaseEditor.edit; the adapter supports the PyPI "
                               "wheel 0.0.1.dev0 and the EasyEdit repository's easyeditor")
    params = tuple(inspect.signature(editor_cls.edit).parameters)
    restore_algs = getattr(modules.utils, "CALLABLE_RESTORE_ALGS", None) if modules.utils else None
    path = getattr(modules.editor, "__file__", None)
    if "sequential_edit" in params or restore_algs is not None:
        if restore_algs is None or not hasattr(restore_algs, "add"):
            raise SplitPluginError(
                "this easyeditor's BaseEditor.edit takes sequential_edit (the git version) but "
                "easyeditor.editors.utils has no mutable CALLABLE_RESTORE_ALGS set, so an edit by "
                "SPLIT could not be undone; update EasyEdit or use the PyPI wheel")
        return HostInfo("git", params, "callable", restore_algs, path)
    if "keep_original_weight" in params:
        return HostInfo("wheel", params, "items", None, path)
    raise SplitPluginError(
        f"unsupported easyeditor version: BaseEditor.edit takes {list(params)}, which matches neither "
        "the PyPI wheel 0.0.1.dev0 (keep_original_weight) nor the git version (sequential_edit)")


# -- CPU fallback for hard-coded cuda devices -----------------------------------------------------------
def _to_cpu(device: Any) -> Any:
    if isinstance(device, str) and device.strip().startswith("cuda"):
        return "cpu"
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


class _CudaToCpu(TorchFunctionMode):
    """Every torch call that names a cuda device gets the CPU instead."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if "device" in kwargs:
            kwargs["device"] = _to_cpu(kwargs["device"])
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.to and len(args) > 1:
            first = args[1]
            if isinstance(first, int) and not isinstance(first, bool):
                first = "cpu"  # t.to(0) means cuda:0
            args = (args[0], _to_cpu(first), *args[2:])
        return func(*args, **kwargs)


@contextlib.contextmanager
def cpu_fallback(force: bool = False) -> Iterator[bool]:
    """Run the PyPI wheel's code, which hard-codes `cuda:{device}`, on a machine without CUDA.

    The wheel moves models and tensors to `f"cuda:{hparams.device}"` in BaseEditor, in its
    evaluation and in FT/ROME. Inside this block (a torch function mode, this thread only)
    every torch call naming a cuda device runs on the CPU instead; SPLIT's own training and
    scoring step outside it (`outside_cpu_fallback`). It does nothing when CUDA is available
    or the imported host is the git version (that takes `device: cpu`), unless `force=True`.
    Yields whether the redirect is active.
    """
    if not force and (torch.cuda.is_available() or "sequential_edit" in imported_edit_params()):
        yield False
        return
    with _CudaToCpu():
        yield True


@contextlib.contextmanager
def outside_cpu_fallback() -> Iterator[None]:
    """Leave `cpu_fallback()`'s mode for the block, if it is the innermost torch function mode."""
    stack = torch.overrides._get_current_function_mode_stack()
    if not stack or not isinstance(stack[-1], _CudaToCpu):
        yield
        return
    with torch.overrides._pop_mode_temporarily():
        yield


def imported_edit_params() -> tuple[str, ...]:
    """BaseEditor.edit's parameter names in the easyeditor already imported (none if not imported)."""
    editor = sys.modules.get("easyeditor.editors.editor")
    edit = getattr(getattr(editor, "BaseEditor", None), "edit", None)
    return tuple(inspect.signature(edit).parameters) if edit is not None else ()
