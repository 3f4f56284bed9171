"""The unified update `h_out = (W + m dW) x + (b + m db)` at one layer, whatever its form.

`x` is the input of the layer's down projection (the MLP's intermediate activation), so the
weight forms are exactly an update of that projection. How each form writes dW and db is in
`forms/` (vector: db = v; lora: dW = (alpha / r) A @ B; local_weight: dense dW and db).
Matrices use the `x @ dW` orientation of the reference code; folding into an `nn.Linear`
writes `W += m dW^T`. Trainable tensors are fp32 whatever the model's dtype (fp64 when training
a float64 model, precision.py); the update is cast on the fly. Putting an intervention into a model (hooks, folds) is `steering.py`.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
from torch import nn

from . import steering
from .errors import SplitPluginError
from .forms import FORMS, Form, get_form
from .layers import ArchSpec, ModelLayout, resolve_layout
from .steering import InterventionHandle, Multiplier, row_multiplier
from .version import __version__

__all__ = ["FORMS", "Intervention", "InterventionConfig", "InterventionHandle", "Multiplier"]


@dataclass
class InterventionConfig:
    """What an intervention is: its form, where it sits, and its shapes."""

    form: str
    layer: int
    hidden_size: int
    intermediate_size: int | None = None
    rank: int | None = None
    alpha: float | None = None
    dropout: float = 0.0
    model_type: str | None = None
    concept: str | None = None
    trained_range: list[float] | None = None  # [lowest, highest] |m| training used (None: untrained, e.g. CAA)
    version: str = __version__

    def __post_init__(self) -> None:
        form = get_form(self.form)
        if not isinstance(self.layer, int) or self.layer < 0:
            raise SplitPluginError(f"layer must be a non-negative integer, got {self.layer!r}")
        for name in ("hidden_size", "intermediate_size"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value <= 0):
                raise SplitPluginError(f"{name} must be a positive integer, got {value!r}")
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise SplitPluginError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if self.alpha is not None and (not _is_number(self.alpha) or not 0 < self.alpha < math.inf):
            raise SplitPluginError(f"lora alpha must be a finite number > 0 (None: alpha = rank), got {self.alpha!r}")
        for name in ("model_type", "concept"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise SplitPluginError(f"{name} must be a string or None, got {getattr(self, name)!r}")
        if self.trained_range is not None and not (
                isinstance(self.trained_range, (list, tuple)) and len(self.trained_range) == 2
                and all(_is_number(v) and 0 < v < math.inf for v in self.trained_range)
                and self.trained_range[0] <= self.trained_range[1]):
            raise SplitPluginError(f"trained_range must be [low, high] with 0 < low <= high, got {self.trained_range!r}")
        form.check(self)

    @property
    def scaling(self) -> float:
        """The constant factor on dW (lora: alpha / rank; 1.0 for the other forms)."""
        return get_form(self.form).scaling(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "InterventionConfig":
        """Build from a saved dict; unknown keys (from a newer version) warn and are dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"ignoring unknown intervention config keys {unknown}", stacklevel=2)
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise SplitPluginError(f"intervention config is incomplete: {exc}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Intervention(nn.Module):
    """One learned control at one layer; the strength `m` is given when it steers a model."""

    def __init__(self, config: InterventionConfig):
        super().__init__()
        self.config = config
        for name, parameter in self.strategy.create(config).items():
            self.register_parameter(name, parameter)
        self.drop = nn.Dropout(config.dropout)
        self.eval()  # dropout only while a trainer says so

    # -- construction -------------------------------------------------------------------
    @classmethod
    def for_model(cls, model: nn.Module, form: str, layer: int, rank: int | None = None,
                  alpha: float | None = None, dropout: float = 0.0, concept: str | None = None,
                  layout: ArchSpec | Mapping | ModelLayout | None = None) -> "Intervention":
        """A fresh intervention shaped for `model` at `layer` (checked against its layer count)."""
        resolved = resolve_layout(model, layout)
        resolved.check_layer(layer)
        d_in, d_out = resolved.down_proj_dims(layer)
        config = InterventionConfig(form=form, layer=layer, hidden_size=d_out,
                                    **get_form(form).shape_fields(d_in, rank, alpha), dropout=dropout,
                                    model_type=resolved.model_type, concept=concept)
        return cls(config)

    @property
    def form(self) -> str:
        return self.config.form

    @property
    def strategy(self) -> Form:
        """The form's implementation (forms/): its parameters, dW, db, hook place and folding."""
        return get_form(self.config.form)

    @property
    def layer(self) -> int:
        return self.config.layer

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- the update ---------------------------------------------------------------------
    def delta_weight_matrix(self) -> torch.Tensor | None:
        """The dense dW ([in, out]) at m = 1, or None when the form has none (vector)."""
        return self.strategy.delta_weight(self)

    def delta_bias_vector(self) -> torch.Tensor | None:
        """db at m = 1 ([out]), or None when the form has none (lora)."""
        return self.strategy.delta_bias(self)

    def delta(self, multiplier: Multiplier, x: torch.Tensor | None = None,
              like: torch.Tensor | None = None) -> torch.Tensor:
        """`m * (x @ dW + db)` in the trainable tensors' dtype (fp32, or fp64), with m a float or one value per row of `x` (else `like`)."""
        ref = x if x is not None else like
        self._follow(ref.device)
        out = self.strategy.delta(self, x, like if like is not None else x)
        return self.drop(out * row_multiplier(multiplier, ref))

    def _follow(self, device: torch.device) -> None:
        """Move to the activations' device once (after `model.to(...)`), not copy on every call."""
        parameter = next(self.parameters())
        if parameter.device != device:
            self.to(device)

    # -- putting it into a model (steering.py) --------------------------------------------------
    def steer(self, model: nn.Module, multiplier: Multiplier = 1.0,
              layout: ArchSpec | Mapping | ModelLayout | None = None) -> InterventionHandle:
        """Hook the update into `model` at strength `multiplier` (a float, or one per batch row).

        Use as a context manager or call `.remove()`. Different interventions stack; steering
        with one that already acts on this model is refused.
        """
        return InterventionHandle(self, model, multiplier, layout)

    def apply(self, fn, *args, **kwargs) -> "Intervention":
        """`nn.Module.apply(fn)`; the old `apply(model, multiplier)` is refused with its new name."""
        if args or kwargs or isinstance(fn, nn.Module):
            raise SplitPluginError("Intervention.apply(model, multiplier) is now "
                                   "intervention.steer(model, multiplier=...); apply(fn) is "
                                   "nn.Module.apply again")
        return super().apply(fn)

    def fold(self, model: nn.Module, multiplier: float = 1.0,
             layout: ArchSpec | Mapping | ModelLayout | None = None) -> None:
        """Write `W + m dW` and `b + m db` into the model's down projection (undo with unfold)."""
        steering.fold(self, model, multiplier, layout)

    def unfold(self, model: nn.Module) -> None:
        """Restore the down projection exactly as it was before `fold`."""
        steering.unfold(self, model)

    # -- persistence (see serialization.py) -----------------------------------------------
    def save_pretrained(self, directory: str, card_folder: str | None = None) -> None:
        """Write `config.json` + `intervention.safetensors` atomically into `directory`.

        `card_folder`: the path the model card's loading snippet quotes (default `directory`), for
        a folder written inside a temporary one that is moved into place afterwards.
        """
        from .serialization import save_intervention
        save_intervention(self, directory, card_folder)

    @classmethod
    def from_pretrained(cls, directory: str) -> "Intervention":
        """Load what `save_pretrained` wrote; a truncated or mismatched file is refused."""
        from .serialization import load_intervention
        return load_intervention(directory)

    # -- arithmetic (see composition.py): a + b, a - b, k * a, -a -----------------------------------
    def __add__(self, other: "Intervention") -> "Intervention":
        from .composition import add
        return add(self, other) if isinstance(other, Intervention) else NotImplemented

    def __sub__(self, other: "Intervention") -> "Intervention":
        return self + (-other) if isinstance(other, Intervention) else NotImplemented

    def __mul__(self, factor: float) -> "Intervention":
        from .composition import scale
        return scale(self, factor)

    __rmul__ = __mul__

    def __neg__(self) -> "Intervention":
        return self * -1.0

    def extra_repr(self) -> str:
        c = self.config
        return f"form={c.form}, layer={c.layer}{self.strategy.describe(c)}, params={self.num_parameters()}"
