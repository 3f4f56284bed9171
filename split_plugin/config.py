"""TrainConfig: every training setting, loaded from YAML with unknown keys and wrong types named."""
from __future__ import annotations

import hashlib
import os
import json
import math
import reprlib
import typing
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml

from .data import PROMPT_FORMATS
from .errors import SplitPluginError
from .forms import FORMS, get_form

METHODS = ("split", "sft", "reps", "caa")


def default_factors(form: str) -> list[float]:
    """The training strengths a form uses when `factors` is not given (forms/<form>.py)."""
    return list(get_form(form).factors)


@dataclass
class TrainConfig:
    """How to train one intervention. Defaults follow the reference's vector-form settings;
    `factors` left unset take the form's own strengths (vector 2..20, the weight forms 0.2..2).

    `batch_size` counts the pairs of one step over all processes (the global batch), so a
    data-parallel run trains the same intervention as one process with the same settings.
    """

    layer: int
    method: str = "split"
    form: str = "vector"
    rank: int = 4
    alpha: float | None = None
    dropout: float = 0.0
    # optimisation
    lr: float = 0.08
    epochs: int = 2
    # pairs per batch in all: the GLOBAL batch. Under data-parallel training (accelerate launch,
    # torchrun) each of W processes scores about batch_size / W of them, and the update equals
    # the one-process update on the whole batch.
    batch_size: int = 4
    grad_accum: int = 1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    # rows: "add" rows (+s, positive = matching) and "sub" rows (-s, roles swapped)
    factors: list[float] | None = None  # None: the form's default strengths (forms/<form>.py)
    sub_rows: bool = True
    # the SPLIT objective: pos_weight L_pos + neg_weight L_neg + margin_weight relu(margin - (L_neg - L_pos))
    pos_weight: float = 1.0
    neg_weight: float = 0.5
    margin_weight: float = 5.0
    margin: float = 0.5
    pooled_hinge: bool = False
    loss_reduction: str = "mean"
    # RePS
    reps_beta: float = 2.0
    reps_gamma: float = 1.0
    # utility-preserving option: KL(unsteered || steered) on generic text at the drawn multiplier
    kl_weight: float = 0.0
    kl_text: str | None = None  # None: the "fit" half of the bundled prose, never the half that measures perplexity
    # utility-preserving option from the manifold view: penalise the share of the edit's output
    # directions outside the top-`manifold_rank` principal subspace of unsteered layer-L states (kl_text)
    manifold_weight: float = 0.0
    manifold_rank: int = 16
    # data
    max_length: int = 256
    system_prompt: str | None = None
    prompt_format: str = "chat"  # see data.PROMPT_FORMATS: "plain" is EasyEdit's `prompt + " " + answer`
    # machinery
    device: str = "cpu"
    autocast: str | None = None
    prefix_cache: bool = True
    answer_only_head: bool = True
    joint_forward: bool = True
    pack_pairs: bool = True  # both answers of a pair in one row: the shared prompt runs once
    cache_limit_mb: int = 2048
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        _check_types(self)
        if self.form in FORMS and self.factors is None:
            self.factors = default_factors(self.form)
        self._check_values()
        self.factors = [float(f) for f in self.factors]

    def _check_values(self) -> None:
        def bad(msg: str) -> None:
            raise SplitPluginError(msg)

        if self.method not in METHODS:
            bad(f"method {self.method!r} is not one of {METHODS}")
        if self.form not in FORMS:
            bad(f"form {self.form!r} is not one of {FORMS}")
        if self.method == "caa" and self.form != "vector":
            bad(f"caa makes a vector (mean difference); use form: vector, not {self.form!r}")
        if self.layer < 0:
            bad(f"layer must be >= 0, got {self.layer}")
        if self.rank <= 0:
            bad(f"rank must be a positive integer, got {self.rank}")
        for name in ("epochs", "batch_size", "grad_accum", "max_length", "manifold_rank"):
            if getattr(self, name) <= 0:
                bad(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("checkpoint_every", "cache_limit_mb"):
            if getattr(self, name) < 0:
                bad(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "max_grad_norm", "pos_weight", "neg_weight",
                     "margin_weight", "margin", "kl_weight", "manifold_weight", "reps_beta", "reps_gamma", "dropout"):
            value = getattr(self, name)
            if not math.isfinite(value) or (value < 0 and name not in ("margin", "reps_gamma")):
                bad(f"{name} must be a finite number >= 0, got {value}")
        if self.alpha is not None and not (math.isfinite(self.alpha) and self.alpha > 0):
            bad(f"alpha must be a finite number > 0 (or null for alpha = rank), got {self.alpha}")
        if not 0 <= self.dropout < 1:
            bad(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.factors or not all(math.isfinite(f) and f > 0 for f in self.factors):
            bad(f"factors must be a non-empty list of finite positive strengths, got {self.factors}")
        if self.loss_reduction not in ("mean", "sum"):
            bad(f"loss_reduction must be 'mean' or 'sum', got {self.loss_reduction!r}")
        if self.prompt_format not in PROMPT_FORMATS:
            bad(f"prompt_format must be one of {PROMPT_FORMATS}, got {self.prompt_format!r}")
        if self.autocast not in (None, "bf16", "fp16"):
            bad(f"autocast must be null, 'bf16' or 'fp16', got {self.autocast!r}")
        _check_device_name(self.device)

    # -- loading --------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        """Build from a mapping, naming unknown and missing keys and listing the valid ones."""
        if not isinstance(data, Mapping):
            raise SplitPluginError(f"{source} must be a mapping of settings, got {type(data).__name__}")
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(valid), key=str)
        if unknown:
            raise SplitPluginError(f"unknown key(s) {unknown} in {source}; valid keys are {valid}")
        missing = [f.name for f in fields(cls) if f.default is MISSING
                   and f.default_factory is MISSING and f.name not in data]
        if missing:
            raise SplitPluginError(f"missing required key(s) {missing} in {source}")
        return cls(**dict(data))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(load_yaml(path), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self, length: int = 10) -> str:
        """A short hash of the settings that differ from the defaults: it names a result by what
        trained it, and stays the same when a later version adds a setting with a default."""
        changed = {f.name: getattr(self, f.name) for f in fields(self)
                   if f.default is MISSING or getattr(self, f.name) != f.default}
        if self.factors == default_factors(self.form):
            changed.pop("factors", None)
        return hashlib.sha1(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:length]


#: libyaml's safe loader where PyYAML was built with it: a deeply nested file fails in ms, not seconds
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning parse errors into one message with the line number."""
    path = Path(path)
    if not path.is_file():
        raise SplitPluginError(f"no such hyperparameter file: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=SAFE_LOADER)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise SplitPluginError(f"{path} is not valid YAML{line}: {getattr(exc, 'problem', exc)}") from None
    except UnicodeDecodeError:
        raise SplitPluginError(f"{path} is not UTF-8 text") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # bad !!int/!!float/... values
        raise SplitPluginError(f"{path} is not valid YAML: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise SplitPluginError(f"{path} must hold a mapping of settings (key: value lines)")
    return data


def _check_device_name(device: str) -> None:
    """Refuse a device string torch cannot parse (availability is checked when training starts)."""
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise SplitPluginError(f"device {device!r} is not a device name; use cpu, cuda, cuda:N or mps") from None


def _matches(value: Any, annotation: Any) -> bool:
    """A small runtime check for the annotation shapes used in our configs."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


_SHORT = reprlib.Repr()  # quotes a user's value without printing all of it (a list nested 3000 deep)
_SHORT.maxstring = _SHORT.maxother = 80


def _check_types(obj: Any) -> None:
    """Raise naming every field whose value does not match its annotation; coerce ints to floats."""
    hints = typing.get_type_hints(type(obj))
    wrong = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, str) and hints[f.name] in (float, float | None) and _is_number(value):
            value = float(value)  # YAML reads 1e-3 as a string
            setattr(obj, f.name, value)
        if not _matches(value, hints[f.name]):
            wrong.append(f"{f.name}={_SHORT.repr(value)} (expected {_type_name(hints[f.name])})")
        elif hints[f.name] is float or (typing.get_origin(hints[f.name]) is list and value):
            setattr(obj, f.name, [float(v) for v in value] if isinstance(value, list) else float(value))
    if wrong:
        raise SplitPluginError(f"wrong type for {', '.join(wrong)}")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _type_name(annotation: Any) -> str:
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")


def as_train_config(config: TrainConfig | Mapping | str | os.PathLike) -> TrainConfig:
    """Accept a TrainConfig, a mapping of settings or a YAML path."""
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, Mapping):
        return TrainConfig.from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        return TrainConfig.from_yaml(config)
    raise SplitPluginError(f"config must be a TrainConfig, a mapping of settings or a YAML path, "
                           f"got {type(config).__name__}")
