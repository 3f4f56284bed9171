"""`SPLITHyperParams`: the host's hyperparameter class for SPLIT, loaded from YAML and validated.

Host fields (read by BaseEditor): `alg_name`, `model_name`, `device` (`auto`: cuda:0 when
present, else "cpu"), `model_parallel`, `max_length` (evaluation truncation), `batch_size`
(the host's edit batch: 1 for `edit`, the chunk size for `batch_edit`), `use_chat_template`
(the git version's scoring format). Training fields are generated from `TrainConfig`'s own
fields (never a hand-kept copy); the two whose names the host already uses are renamed:
`train_batch_size` and `train_max_length`; `prompt_format` follows `request_format`.
`multiplier` is the strength at which the trained intervention is applied after the edit.
The class does not import the host: BaseEditor only reads its attributes.

`model_name` is what BaseEditor loads, except:
- `smollm2-135m-instruct` names the embedded model (loaded by `split_plugin.models`);
- a name the host does not recognise (it matches substrings such as "llama", "gpt", "qwen")
  is loaded by the adapter with `AutoModelForCausalLM` (`model_loader: auto`, the default);
- `with_model(model, tok)` uses a model that is already loaded.
In those cases `model_name` becomes a `PreloadedModel`: a str (so the host's `.lower()`
checks keep working) that BaseEditor unpacks into `(model, tokenizer)` on its "not a plain
str" path, present in both host versions.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import MISSING, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..config import TrainConfig, _check_types, default_factors, load_yaml
from ..errors import SplitPluginError
from ._host import imported_edit_params, imported_host_model_keywords

ALG_NAME = "SPLIT"
EMBEDDED_MODEL_NAME = "smollm2-135m-instruct"
MODEL_LOADERS = ("auto", "host", "split_plugin")
#: "host": train and score in the format the host evaluates (`prompt + " " + target`, through
#: the chat template when `use_chat_template` is set); "chat": SPLIT's own chat format
REQUEST_FORMATS = ("host", "chat")
_DTYPES = ("float32", "bfloat16", "float16")
#: the YAMLs shipped with the package, reachable by name: from_hparams("smollm2-135m-instruct")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"

#: TrainConfig fields SPLITHyperParams names differently (the host uses the plain names)
RENAMED = {"batch_size": "train_batch_size", "max_length": "train_max_length"}
#: TrainConfig fields that are not hyperparameters here: the device is the model's; one edit
#: is too short for checkpoints; the prompt format follows `request_format`
NOT_MAPPED = ("device", "checkpoint_dir", "checkpoint_every", "prompt_format")
#: training defaults that differ inside an editor: no progress bars; factors by form
TRAIN_DEFAULTS = {"progress": False, "factors": None}


# -- preloaded models ----------------------------------------------------------------------------------
class PreloadedModel(str):
    """A model name that BaseEditor unpacks into `(model, tokenizer)` instead of loading by name.

    It is a str holding a display name, so the host's `model_name.lower()` checks work; its
    iteration yields the model and tokenizer, loaded on first use by `loader` if not given.
    Copies (copy/deepcopy of the hyperparameters) share the same model.
    """

    def __new__(cls, name: str, model: Any = None, tokenizer: Any = None,
                loader: Callable[[], tuple] | None = None):
        if model is None and loader is None:
            raise SplitPluginError("PreloadedModel needs a model and tokenizer, or a loader")
        obj = super().__new__(cls, name)
        obj._pair = (model, tokenizer) if model is not None else None
        obj._loader = loader
        return obj

    def load(self) -> tuple:
        """(model, tokenizer), loading them the first time."""
        if self._pair is None:
            self._pair = tuple(self._loader())
        return self._pair

    @property
    def loaded(self) -> bool:
        return self._pair is not None

    def __iter__(self):
        return iter(self.load())

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):  # pickles (and JSON-dumps) as the plain name
        return (str, (str(self),))

    def __repr__(self) -> str:
        return f"PreloadedModel({str(self)!r}, loaded={self.loaded})"


def _ensure_pad(tokenizer) -> None:
    """Hosts pad with eos when a tokenizer has no pad token (they set it themselves when they load)."""
    if getattr(tokenizer, "pad_token_id", None) is None and getattr(tokenizer, "eos_token", None):
        tokenizer.pad_token = tokenizer.eos_token


def _embedded_aliases() -> frozenset[str]:
    from .. import models

    return frozenset(getattr(models, "DEFAULT_ALIASES", ())) | {EMBEDDED_MODEL_NAME}


def _embedded_loader(dtype: str) -> Callable[[], tuple]:
    def load() -> tuple:
        from ..models import load_default_model  # the converted SmolLM2-135M-Instruct (LlamaForCausalLM)

        model, tokenizer = load_default_model(dtype=getattr(torch, dtype))
        _ensure_pad(tokenizer)
        return model, tokenizer

    return load


def _auto_loader(name: str, dtype: str) -> Callable[[], tuple]:
    def load() -> tuple:
        from ..models import load_model  # local folder, .gguf file, or hub id (online only)

        model, tokenizer = load_model(name, dtype=dtype, device="cpu")
        _ensure_pad(tokenizer)
        return model, tokenizer

    return load


def preloaded(model: Any, tokenizer: Any, name: str | None = None) -> PreloadedModel:
    """A `model_name` for any host hyperparameters (FT, ROME, ... too) that hands BaseEditor this model."""
    if name is None:
        config = getattr(model, "config", None)
        name = str(getattr(config, "_name_or_path", "") or getattr(config, "model_type", "") or "model")
    return PreloadedModel(name, model, tokenizer)


# -- the hyperparameters -----------------------------------------------------------------------------
def _train_fields() -> list[tuple]:
    """(name, type, field) for every TrainConfig setting, renamed where the host owns the name."""
    out = []
    for f in fields(TrainConfig):
        if f.name in NOT_MAPPED or f.name == "layer":
            continue
        name = RENAMED.get(f.name, f.name)
        if f.name in TRAIN_DEFAULTS:
            default = TRAIN_DEFAULTS[f.name]
            kind = f.type if default is not None or "None" in str(f.type) else f"{f.type} | None"
            out.append((name, kind, field(default=default)))
        elif f.default_factory is not MISSING:
            out.append((name, f.type, field(default_factory=f.default_factory)))
        else:
            out.append((name, f.type, field(default=f.default)))
    return out


class _SPLITHyperParamsBase:
    """SPLIT as an EasyEdit editing method; see the module docstring and configs/*.yaml."""

    def __post_init__(self) -> None:
        if self.alg_name != ALG_NAME:
            raise SplitPluginError(f"SPLITHyperParams needs alg_name: {ALG_NAME}, got {self.alg_name!r}")
        _check_types(self)
        if self.batch_size < 1:
            raise SplitPluginError(f"batch_size (the host's edit batch) must be >= 1, got {self.batch_size}")
        for key, allowed in (("model_loader", MODEL_LOADERS), ("model_dtype", _DTYPES),
                             ("request_format", REQUEST_FORMATS)):
            if getattr(self, key) not in allowed:
                raise SplitPluginError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        if self.multiplier is not None and not math.isfinite(self.multiplier):
            raise SplitPluginError(f"multiplier must be a finite number (or null for the median of "
                                   f"the factors), got {self.multiplier}")
        self.device = resolve_device(self.device)
        self.model_name = self._resolve_model_name(self.model_name)
        self.to_train_config()  # validate the training values now, with our field names

    @property
    def prompt_format(self) -> str:
        """How pairs become text (data.PROMPT_FORMATS), from request_format and use_chat_template."""
        if self.request_format == "chat":
            return "chat"
        return "chat_plain" if self.use_chat_template else "plain"

    # -- model names ---------------------------------------------------------------------------------
    def _resolve_model_name(self, name: Any) -> Any:
        if isinstance(name, PreloadedModel):
            return name
        if isinstance(name, (tuple, list)) and len(name) == 2:
            return preloaded(*name)
        if not isinstance(name, str) or not name.strip():
            raise SplitPluginError(
                f"model_name must be a model path or hub name, '{EMBEDDED_MODEL_NAME}' (the embedded "
                f"model) or a (model, tokenizer) pair, got {name!r}")
        if name.strip().lower() in _embedded_aliases():
            return PreloadedModel(EMBEDDED_MODEL_NAME, loader=_embedded_loader(self.model_dtype))
        if self.model_loader == "host" and self.model_dtype != "float32":
            raise SplitPluginError(
                f"model_loader: host loads {name!r} in float32 (the host has no dtype setting for it), "
                f"but model_dtype is {self.model_dtype!r}; set model_loader: auto to load it in that dtype")
        # the host would load in float32 whatever model_dtype says, so a dtype means we load it
        if self.model_loader == "split_plugin" or (self.model_loader == "auto" and (
                not self.host_can_load(name) or self.model_dtype != "float32")):
            return PreloadedModel(name, loader=_auto_loader(name, self.model_dtype))
        return name

    @staticmethod
    def host_can_load(name: str) -> bool:
        """Whether the imported host's BaseEditor loads `name` itself (by its substring rules)."""
        return any(k in name.lower() for k in imported_host_model_keywords())

    def with_model(self, model: Any, tokenizer: Any, name: str | None = None) -> "SPLITHyperParams":
        """A copy whose BaseEditor uses this already-loaded model and tokenizer."""
        return dataclasses.replace(self, model_name=preloaded(model, tokenizer, name))

    # -- training ------------------------------------------------------------------------------------
    def resolved_factors(self) -> list[float]:
        """`factors`, else the form's default strengths."""
        return [float(f) for f in (self.factors if self.factors is not None else default_factors(self.form))]

    def resolved_multiplier(self) -> float:
        """The strength applied after the edit: `multiplier`, else the median of the factors."""
        if self.multiplier is not None:
            return float(self.multiplier)
        factors = sorted(self.resolved_factors())
        mid = len(factors) // 2
        return factors[mid] if len(factors) % 2 else (factors[mid - 1] + factors[mid]) / 2

    def to_train_config(self, device: str = "cpu", **overrides: Any) -> TrainConfig:
        """The TrainConfig for this edit (device = the model's; overrides replace fields)."""
        values: dict[str, Any] = {}
        for f in fields(TrainConfig):
            if f.name in NOT_MAPPED:
                continue
            values[f.name] = getattr(self, RENAMED.get(f.name, f.name))
        values["factors"] = self.resolved_factors()
        values["device"] = device
        values["prompt_format"] = self.prompt_format
        values.update(overrides)
        try:
            return TrainConfig(**values)
        except SplitPluginError as exc:
            message = str(exc)
            for old, new in RENAMED.items():
                message = re.sub(rf"(?<![\w]){old}(?![\w])", new, message)
            raise SplitPluginError(message) from None

    # -- loading -------------------------------------------------------------------------------------
    @classmethod
    def valid_keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "hyperparameters") -> "SPLITHyperParams":
        """Build from a mapping, naming unknown and missing keys and listing the valid ones."""
        if not isinstance(data, Mapping):
            raise SplitPluginError(f"{source} must be a mapping of settings, got {type(data).__name__}")
        if data.get("alg_name") != ALG_NAME:
            raise SplitPluginError(
                f"{source}: alg_name must be {ALG_NAME!r} for SPLITHyperParams, got {data.get('alg_name')!r}")
        valid = cls.valid_keys()
        unknown = sorted(set(data) - set(valid))
        if unknown:
            close = {k: difflib.get_close_matches(k, valid, n=1) for k in unknown}
            hint = "".join(f"; did you mean {m[0]!r} for {k!r}?" for k, m in close.items() if m)
            raise SplitPluginError(f"unknown key(s) {unknown} in {source}{hint}; valid keys are {valid}")
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
                   and f.name not in data]
        if missing:
            raise SplitPluginError(f"missing required key(s) {missing} in {source}; valid keys are {valid}")
        try:
            return cls(**dict(data))
        except SplitPluginError as exc:
            raise SplitPluginError(f"{source}: {exc}") from None

    @classmethod
    def from_hparams(cls, hparams_name_or_path: str | Path) -> "SPLITHyperParams":
        """Load a YAML file, or a shipped one by name (e.g. "smollm2-135m-instruct").

        ".yaml" is appended when missing, as the host's classes do; a path that exists wins
        over a shipped name.
        """
        return cls.from_dict(load_yaml(find_config(hparams_name_or_path)), source=str(hparams_name_or_path))

    @classmethod
    def from_json(cls, fpath: str | Path) -> "SPLITHyperParams":
        import json

        try:
            data = json.loads(Path(fpath).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SplitPluginError(f"cannot read {fpath} as JSON: {exc}") from None
        return cls.from_dict(data, source=str(fpath))

    def to_dict(self) -> dict[str, Any]:
        """Plain values (a preloaded model's name as a string), e.g. to write a YAML back."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["model_name"] = str(self.model_name)
        return out


#: the fields BaseEditor reads, then the adapter's, then TrainConfig's (generated)
SPLITHyperParams = dataclasses.make_dataclass("SPLITHyperParams", [
    ("model_name", Any), ("layer", int),
    ("alg_name", str, field(default=ALG_NAME)),
    ("device", "int | str", field(default="auto")),
    ("model_parallel", bool, field(default=False)),
    ("max_length", int, field(default=40)),
    ("batch_size", int, field(default=1)),
    ("use_chat_template", bool, field(default=False)),
    ("model_loader", str, field(default="auto")),
    ("model_dtype", str, field(default="float32")),
    ("request_format", str, field(default="host")),
    ("multiplier", "float | None", field(default=None)),
    ("log_odds_metrics", bool, field(default=True)),
    *_train_fields(),
], bases=(_SPLITHyperParamsBase,), namespace={"__module__": __name__})
SPLITHyperParams.__doc__ = _SPLITHyperParamsBase.__doc__


def resolve_device(device: Any) -> Any:
    """`auto` -> 0 (cuda:0) with CUDA or the PyPI wheel (it takes only an index; on a CPU machine
    `cpu_fallback()` redirects it), else "cpu"; anything else unchanged."""
    if isinstance(device, str) and device.strip().lower() == "auto":
        wheel = "keep_original_weight" in imported_edit_params()
        return 0 if torch.cuda.is_available() or wheel else "cpu"
    return device


def shipped_configs() -> list[str]:
    """Names of the YAMLs shipped with the package."""
    return sorted(p.name[:-len(".yaml")] for p in CONFIG_DIR.glob("*.yaml"))


def find_config(name_or_path: str | Path) -> Path:
    """A YAML path: the path itself (".yaml" appended when missing), else a shipped config's name."""
    path = Path(name_or_path)
    candidates = [path] if path.suffix in (".yaml", ".yml") else [path, path.with_name(path.name + ".yaml")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    shipped = CONFIG_DIR / (path.name if path.suffix in (".yaml", ".yml") else path.name + ".yaml")
    if len(path.parts) == 1 and shipped.is_file():
        return shipped
    raise SplitPluginError(f"no such hyperparameter file {str(name_or_path)!r}: not a YAML path, nor one of the "
                           f"shipped configs {shipped_configs()}")

