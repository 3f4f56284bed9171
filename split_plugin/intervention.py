"""The unified update `h_out = (W + m dW) x + (b + m db)` at one layer, in three forms.

- vector:        db = v                    (added to the decoder layer's output)
- lora:          dW = (alpha / r) * A @ B  (A: [in, r], B: [r, out]; B = 0 at init)
- local_weight:  dense dW: [in, out] and db: [out]

`x` is the input of the layer's down projection (the MLP's intermediate activation), so the
lora and local_weight forms are exactly an update of that projection. Matrices use the
`x @ dW` orientation of the reference code; folding into an `nn.Linear` writes `W += m dW^T`.
Trainable tensors are fp32 whatever the model's dtype; the update is cast on the fly.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Union

import torch
from torch import nn

from .errors import SplitPluginError
from .layers import ArchSpec, ModelLayout, resolve_layout
from .version import __version__

FORMS = ("vector", "lora", "local_weight")
Multiplier = Union[float, torch.Tensor]


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
        if self.form not in FORMS:
            raise SplitPluginError(f"form {self.form!r} is not one of {FORMS}")
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
        if self.form != "vector" and not self.intermediate_size:
            raise SplitPluginError(f"the {self.form} form needs intermediate_size (the down "
                                   "projection's input width)")
        if self.form == "lora":
            self._check_rank()
            if self.alpha is None:
                self.alpha = float(self.rank)

    def _check_rank(self) -> None:
        limit = min(self.hidden_size, self.intermediate_size)
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or not 0 < self.rank <= limit:
            raise SplitPluginError(
                f"lora rank must be an integer in 1..{limit} (the smaller of the down projection's "
                f"dims {self.intermediate_size}x{self.hidden_size}), got {self.rank!r}"
            )

    @property
    def scaling(self) -> float:
        """The lora update is scaled by alpha / rank (1.0 for the other forms)."""
        return float(self.alpha) / self.rank if self.form == "lora" else 1.0

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


def check_multiplier(multiplier: Any) -> Multiplier:
    """A finite number, or a numeric tensor (one value per batch row); anything else is refused."""
    if torch.is_tensor(multiplier):
        if not (multiplier.dtype.is_complex or multiplier.dtype == torch.bool):
            return multiplier
    elif not isinstance(multiplier, (str, bool)) and hasattr(multiplier, "__float__") \
            and math.isfinite(float(multiplier)):
        return multiplier
    raise SplitPluginError(f"the multiplier must be a finite number (or a tensor with one per batch row), "
                           f"got {multiplier!r}")


def _scalar_multiplier(multiplier: Any) -> float:
    """One finite float (fold writes a single strength into the weights)."""
    try:
        value = float(check_multiplier(multiplier))
    except (RuntimeError, TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise SplitPluginError(f"fold takes one finite number as the multiplier, got {multiplier!r}; "
                               "per-row multipliers need apply()")
    return value


def _as_row_multiplier(multiplier: Multiplier, ref: torch.Tensor) -> torch.Tensor | float:
    """A float stays a float; a [batch] tensor becomes [batch, 1, ..., 1] to broadcast on `ref`."""
    if not torch.is_tensor(multiplier):
        return float(multiplier)
    m = multiplier.to(device=ref.device, dtype=torch.float32)
    if m.ndim == 0:
        return m
    if m.ndim != 1 or m.shape[0] != ref.shape[0]:
        raise SplitPluginError(
            f"a per-row multiplier must have shape [batch] = [{ref.shape[0]}], got {tuple(m.shape)}"
        )
    return m.view(-1, *([1] * (ref.ndim - 1)))


def _is_zero(multiplier: Multiplier) -> bool:
    return not torch.is_tensor(multiplier) and float(multiplier) == 0.0


class Intervention(nn.Module):
    """One learned control at one layer; the strength `m` is given when it is applied."""

    def __init__(self, config: InterventionConfig):
        super().__init__()
        self.config = config
        h, i = config.hidden_size, config.intermediate_size
        if config.form == "vector":
            self.vector = nn.Parameter(torch.zeros(h))
        elif config.form == "lora":
            self.lora_A = nn.Parameter(torch.empty(i, config.rank))
            self.lora_B = nn.Parameter(torch.zeros(config.rank, h))
            # the fan-in init nn.Linear uses; with B = 0 the update starts at exactly zero
            nn.init.kaiming_uniform_(self.lora_A.T, a=math.sqrt(5))
        else:
            self.delta_weight = nn.Parameter(torch.zeros(i, h))
            self.delta_bias = nn.Parameter(torch.zeros(h))
        self.drop = nn.Dropout(config.dropout)
        self._folded: dict[int, tuple] = {}
        self.eval()  # dropout only while a trainer says so

    # -- construction -------------------------------------------------------------------
    @classmethod
    def for_model(cls, model: nn.Module, form: str, layer: int, rank: int | None = None,
                  alpha: float | None = None, dropout: float = 0.0, concept: str | None = None,
                  layout: ArchSpec | Mapping | None = None) -> "Intervention":
        """A fresh intervention shaped for `model` at `layer` (checked against its layer count)."""
        resolved = resolve_layout(model, layout)
        resolved.check_layer(layer)
        d_in, d_out = resolved.down_proj_dims(layer)
        config = InterventionConfig(form=form, layer=layer, hidden_size=d_out,
                                    intermediate_size=d_in if form != "vector" else None,
                                    rank=rank if form == "lora" else None,
                                    alpha=alpha if form == "lora" else None, dropout=dropout,
                                    model_type=resolved.model_type, concept=concept)
        return cls(config)

    @property
    def form(self) -> str:
        return self.config.form

    @property
    def layer(self) -> int:
        return self.config.layer

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- the update ---------------------------------------------------------------------
    def delta_weight_matrix(self) -> torch.Tensor | None:
        """The dense dW ([in, out]) at m = 1, or None for the vector form."""
        if self.form == "lora":
            return self.config.scaling * (self.lora_A @ self.lora_B)
        return self.delta_weight if self.form == "local_weight" else None

    def delta_bias_vector(self) -> torch.Tensor | None:
        """db at m = 1: the steering vector, the local_weight bias, or None for lora."""
        if self.form == "vector":
            return self.vector
        return self.delta_bias if self.form == "local_weight" else None

    def delta(self, multiplier: Multiplier, x: torch.Tensor | None = None,
              like: torch.Tensor | None = None) -> torch.Tensor:
        """`m * (x @ dW + db)` in fp32, with m a float or one value per row of `x` / `like`."""
        ref = x if x is not None else like
        if self.form == "vector":
            out = self.vector.to(ref.device).expand(*ref.shape[:-1], -1)
        elif self.form == "lora":
            xf = x.to(torch.float32)
            out = (xf @ self.lora_A.to(x.device)) @ self.lora_B.to(x.device) * self.config.scaling
        else:
            xf = x.to(torch.float32)
            out = xf @ self.delta_weight.to(x.device) + self.delta_bias.to(x.device)
        return self.drop(out * _as_row_multiplier(multiplier, ref))

    # -- hooks --------------------------------------------------------------------------
    def apply(self, model: nn.Module, multiplier: Multiplier = 1.0,
              layout: ArchSpec | Mapping | ModelLayout | None = None) -> "InterventionHandle":
        """Hook the update into `model`; use as a context manager or call `.remove()`."""
        return InterventionHandle(self, model, multiplier, layout)

    # -- folding ------------------------------------------------------------------------
    def fold(self, model: nn.Module, multiplier: float = 1.0,
             layout: ArchSpec | Mapping | None = None) -> None:
        """Write `W + m dW` and `b + m db` into the model's down projection (undo with unfold)."""
        resolved = resolve_layout(model, layout)
        if id(model) in self._folded:
            raise SplitPluginError("this intervention is already folded into this model; unfold first")
        resolved.check_layer(self.layer)
        _check_fits(self, resolved)
        m = _scalar_multiplier(multiplier)
        if self.form == "vector" and resolved.post_mlp_norm(self.layer) is not None:
            raise SplitPluginError(
                f"the vector form cannot be folded exactly into a {resolved.model_type} model: a "
                f"norm ({resolved.spec.post_mlp_norm}) follows the down projection; apply it as a hook"
            )
        proj = resolved.down_proj(self.layer)
        saved_w = proj.weight.detach().clone()
        saved_b = proj.bias.detach().clone() if proj.bias is not None else None
        try:
            self._write_update(proj, m)
        except BaseException:
            _restore(proj, saved_w, saved_b)  # never leave a half-written layer
            raise
        self._folded[id(model)] = (proj, saved_w, saved_b)

    @torch.no_grad()
    def _write_update(self, proj: nn.Module, multiplier: float) -> None:
        """`W += m dW` (transposed for nn.Linear) and `b += m db` in place."""
        dw = self.delta_weight_matrix()
        if dw is not None:
            dw = dw if type(proj).__name__ == "Conv1D" else dw.T
            proj.weight.copy_((proj.weight.float() + multiplier * dw).to(proj.weight.dtype))
        db = self.delta_bias_vector()
        if db is not None:
            if proj.bias is None:
                proj.bias = nn.Parameter(proj.weight.new_zeros(db.shape[0]), requires_grad=False)
            proj.bias.copy_((proj.bias.float() + multiplier * db).to(proj.bias.dtype))

    def unfold(self, model: nn.Module) -> None:
        """Restore the down projection exactly as it was before `fold`."""
        if id(model) not in self._folded:
            raise SplitPluginError("this intervention is not folded into this model")
        _restore(*self._folded.pop(id(model)))

    # -- persistence (see serialization.py) -----------------------------------------------
    def save_pretrained(self, directory: str) -> None:
        """Write `config.json` + `intervention.safetensors` atomically into `directory`."""
        from .serialization import save_intervention
        save_intervention(self, directory)

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
        rank = f", rank={c.rank}, alpha={c.alpha}" if c.form == "lora" else ""
        return f"form={c.form}, layer={c.layer}{rank}, params={self.num_parameters()}"


@torch.no_grad()
def _restore(proj: nn.Module, saved_w: torch.Tensor, saved_b: torch.Tensor | None) -> None:
    """Put a down projection's saved weight and bias back (a bias fold added is removed)."""
    proj.weight.copy_(saved_w)
    if saved_b is None:
        proj.bias = None
    else:
        proj.bias.copy_(saved_b)


def _add_to_output(output: Any, delta_fn) -> Any:
    """Return the module's output with the update added to its hidden states (never in place)."""
    if isinstance(output, tuple):
        hidden = output[0]
        return (hidden + delta_fn(hidden).to(hidden.dtype),) + output[1:]
    return output + delta_fn(output).to(output.dtype)


class InterventionHandle:
    """Hooks of one applied intervention; `.remove()` or leaving the `with` block removes them."""

    def __init__(self, intervention: Intervention, model: nn.Module, multiplier: Multiplier,
                 layout: ArchSpec | Mapping | ModelLayout | None = None):
        self.intervention = intervention
        self.multiplier = check_multiplier(multiplier)
        self._hooks: list = []
        resolved = layout if isinstance(layout, ModelLayout) else resolve_layout(model, layout)
        resolved.check_layer(intervention.layer)
        _check_fits(intervention, resolved)
        try:
            if intervention.form == "vector":
                target = resolved.layer(intervention.layer)
                self._hooks.append(target.register_forward_hook(self._vector_hook))
            else:
                target = resolved.down_proj(intervention.layer)
                self._hooks.append(target.register_forward_hook(self._weight_hook))
        except BaseException:
            self.remove()
            raise

    def _vector_hook(self, module, args, output):
        if _is_zero(self.multiplier):
            return None
        return _add_to_output(output, lambda h: self.intervention.delta(self.multiplier, like=h))

    def _weight_hook(self, module, args, output):
        if _is_zero(self.multiplier):
            return None
        x = args[0]
        return _add_to_output(output, lambda h: self.intervention.delta(self.multiplier, x=x))

    def remove(self) -> None:
        """Remove every hook; safe to call twice."""
        while self._hooks:
            self._hooks.pop().remove()

    def __enter__(self) -> "InterventionHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _check_fits(intervention: Intervention, layout: ModelLayout) -> None:
    """Refuse an intervention whose shapes or model type do not match the model's layer."""
    d_in, d_out = layout.down_proj_dims(intervention.layer)
    c = intervention.config
    if c.hidden_size != d_out or (c.form != "vector" and c.intermediate_size != d_in):
        raise SplitPluginError(
            f"this {c.form} intervention was made for hidden size {c.hidden_size}"
            + (f" and intermediate size {c.intermediate_size}" if c.form != "vector" else "")
            + f" (model type {c.model_type}), but layer {c.layer} of this {layout.model_type} "
            f"model has hidden size {d_out} and intermediate size {d_in}; load it onto the model "
            "it was trained for"
        )
    if c.model_type and _family(c.model_type) != _family(layout.model_type):
        raise SplitPluginError(
            f"this {c.form} intervention was trained on a {c.model_type} model, but this model is a "
            f"{layout.model_type}; load it onto the model it was trained for (or, if the weights "
            f"really are the same, set intervention.config.model_type = {layout.model_type!r})"
        )


def _family(model_type: str) -> str:
    """A model type without the `_text` suffix (gemma3_text is the text part of gemma3)."""
    return model_type.removesuffix("_text")
