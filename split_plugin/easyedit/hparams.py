"""`SPLITHyperParams`: the host's hyperparameter class for SPLIT, loaded from YAML and validated.

Host fields (read by BaseEditor): `alg_name`, `model_name`, `device`, `model_parallel`,
`max_length` (evaluation truncation), `batch_size` (the host's edit batch: 1 for `edit`, the
chunk size for `batch_edit`). Training fields mirror `TrainConfig`; the two whose names the
host already uses are renamed: `train_batch_size` and `train_max_length`. `multiplier` is the
strength at which the trained intervention is applied after the edit.

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
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

from ..config import TrainConfig, _check_types, load_yaml
from ..errors import SplitPluginError
from ._host import load_host_modules, detect_host

_HOST = load_host_modules()
HyperParams = _HOST.hparams_base

ALG_NAME = "SPLIT"
EMBEDDED_MODEL_NAME = "smollm2-135m-instruct"
LORA_FACTORS = [0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0]
MODEL_LOADERS = ("auto", "host", "split_plugin")
_DTYPES = ("float32", "bfloat16", "float16")

#: TrainConfig fields SPLITHyperParams names differently (the host uses the plain names)
RENAMED = {"batch_size": "train_batch_size", "max_length": "train_max_length"}
#: TrainConfig fields that are not hyperparameters here: the device is the model's; one edit
#: is too short for checkpoints
NOT_MAPPED = ("device", "checkpoint_dir", "checkpoint_every")


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


def _load_embedded() -> tuple:
    from ..models import load_default_model  # the converted SmolLM2-135M-Instruct (LlamaForCausalLM)

    model, tokenizer = load_default_model()
    _ensure_pad(tokenizer)
    return model, tokenizer


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
@dataclass
class SPLITHyperParams(HyperParams):
    """SPLIT as an EasyEdit editing method; see the module docstring and hparams/SPLIT/*.yaml."""

    # the host's
    model_name: Any
    layer: int
    alg_name: str = ALG_NAME
    device: int | str = 0
    model_parallel: bool = False
    max_length: int = 40
    batch_size: int = 1
    # how the model is loaded when the host cannot (see the module docstring)
    model_loader: str = "auto"
    model_dtype: str = "float32"
    # applying the result
    multiplier: float | None = None
    log_odds_metrics: bool = True
    # training (TrainConfig; batch_size / max_length renamed)
    method: str = "split"
    form: str = "vector"
    rank: int = 4
    alpha: float | None = None
    dropout: float = 0.0
    lr: float = 0.08
    epochs: int = 2
    train_batch_size: int = 4
    grad_accum: int = 1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    factors: list[float] | None = None
    sub_rows: bool = True
    pos_weight: float = 1.0
    neg_weight: float = 0.5
    margin_weight: float = 5.0
    margin: float = 0.5
    pooled_hinge: bool = False
    loss_reduction: str = "mean"
    reps_beta: float = 2.0
    reps_gamma: float = 1.0
    kl_weight: float = 0.0
    kl_text: str | None = None
    train_max_length: int = 256
    system_prompt: str | None = None
    autocast: str | None = None
    prefix_cache: bool = True
    answer_only_head: bool = True
    joint_forward: bool = True
    cache_limit_mb: int = 2048
    progress: bool = False

    def __post_init__(self) -> None:
        if self.alg_name != ALG_NAME:
            raise SplitPluginError(f"SPLITHyperParams needs alg_name: {ALG_NAME}, got {self.alg_name!r}")
        _check_types(self)
        if self.batch_size < 1:
            raise SplitPluginError(f"batch_size (the host's edit batch) must be >= 1, got {self.batch_size}")
        if self.model_loader not in MODEL_LOADERS:
            raise SplitPluginError(f"model_loader must be one of {MODEL_LOADERS}, got {self.model_loader!r}")
        if self.model_dtype not in _DTYPES:
            raise SplitPluginError(f"model_dtype must be one of {_DTYPES}, got {self.model_dtype!r}")
        if self.multiplier is not None and not math.isfinite(self.multiplier):
            raise SplitPluginError(f"multiplier must be a finite number (or null for the median of "
                                   f"the factors), got {self.multiplier}")
        self.model_name = self._resolve_model_name(self.model_name)
        self.to_train_config()  # validate the training values now, with our field names

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
            return PreloadedModel(EMBEDDED_MODEL_NAME, loader=_load_embedded)
        if self.model_loader == "split_plugin" or (
                self.model_loader == "auto" and not self.host_can_load(name)):
            return PreloadedModel(name, loader=_auto_loader(name, self.model_dtype))
        return name

    @staticmethod
    def host_can_load(name: str) -> bool:
        """Whether BaseEditor of the installed host loads `name` itself (by its substring rules)."""
        keywords = detect_host(_HOST).model_keywords
        return any(k in name.lower() for k in keywords)

    def with_model(self, model: Any, tokenizer: Any, name: str | None = None) -> "SPLITHyperParams":
        """A copy whose BaseEditor uses this already-loaded model and tokenizer."""
        return dataclasses.replace(self, model_name=preloaded(model, tokenizer, name))

    # -- training ------------------------------------------------------------------------------------
    def resolved_factors(self) -> list[float]:
        if self.factors is not None:
            return [float(f) for f in self.factors]
        if self.form == "vector":
            return [float(f) for f in TrainConfig.__dataclass_fields__["factors"].default_factory()]
        return list(LORA_FACTORS)

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
        """Load a YAML file (".yaml" is appended when missing, as the host's classes do)."""
        path = Path(hparams_name_or_path)
        if path.suffix not in (".yaml", ".yml") and not path.exists():
            path = path.with_name(path.name + ".yaml")
        return cls.from_dict(load_yaml(path), source=str(path))

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

