"""Putting interventions into a model: hooks (`steer`), folds, and the per-model registry.

Each model carries, only while something acts on it, one `Active` registry: the interventions
hooked into it (each with its own multiplier) and the ones folded into its weights (with the
weights they replaced). It refuses the same intervention twice, lets different interventions
stack, and disappears when the last one is removed, leaving the model exactly as it was.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Union

import torch
from torch import nn

from .errors import AlreadyAppliedError, PerRowMultiplierError, SplitPluginError
from .layers import ArchSpec, ModelLayout, resolve_layout
from .precision import master_dtype

if TYPE_CHECKING:
    from .intervention import Intervention

Multiplier = Union[float, torch.Tensor]
_REGISTRY = "_split_plugin_active"  # the attribute the registry lives in while anything is active


# -- multipliers -------------------------------------------------------------------------------
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


def scalar_multiplier(multiplier: Any) -> float:
    """One finite float (fold writes a single strength into the weights)."""
    try:
        value = float(check_multiplier(multiplier))
    except (RuntimeError, TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise SplitPluginError(f"fold takes one finite number as the multiplier, got {multiplier!r}; "
                               "per-row multipliers need steer()")
    return value


def row_multiplier(multiplier: Multiplier, ref: torch.Tensor) -> torch.Tensor | float:
    """A float stays a float; a [batch] tensor becomes [batch, 1, ..., 1] to broadcast on `ref`."""
    if not torch.is_tensor(multiplier):
        return float(multiplier)
    m = multiplier.to(device=ref.device, dtype=master_dtype(ref.dtype))
    if m.ndim == 0:
        return m
    if m.ndim != 1 or m.shape[0] != ref.shape[0]:
        raise PerRowMultiplierError(
            f"a per-row multiplier must have shape [batch] = [{ref.shape[0]}], got {tuple(m.shape)}"
        )
    return m.view(-1, *([1] * (ref.ndim - 1)))


def _is_zero(multiplier: Multiplier) -> bool:
    return not torch.is_tensor(multiplier) and float(multiplier) == 0.0


# -- the registry --------------------------------------------------------------------------------
@dataclass
class _Fold:
    proj: nn.Module
    weight: torch.Tensor
    bias: torch.Tensor | None


@dataclass
class Active:
    """What acts on one model: hooked interventions (-> handle) and folded ones (-> saved weights)."""

    hooked: dict = field(default_factory=dict)
    folded: dict = field(default_factory=dict)

    def check_free(self, intervention: "Intervention") -> None:
        """Refuse an intervention that already acts on this model (it would act twice)."""
        if intervention in self.hooked:
            m = self.hooked[intervention].multiplier
            raise AlreadyAppliedError(
                f"this {intervention.form} intervention (layer {intervention.layer}) is already steering "
                f"this model (multiplier {_show(m)}); remove that handle first (leave its with block or "
                "call .remove()), or set handle.multiplier to change its strength")
        if intervention in self.folded:
            raise AlreadyAppliedError(
                f"this {intervention.form} intervention (layer {intervention.layer}) is already folded "
                "into this model; call intervention.unfold(model) first")


def active(model: nn.Module) -> Active:
    """The model's registry (an empty one, not attached, when nothing acts on it)."""
    return model.__dict__.get(_REGISTRY) or Active()


def _attach(model: nn.Module, registry: Active) -> None:
    if registry.hooked or registry.folded:
        object.__setattr__(model, _REGISTRY, registry)
    else:
        model.__dict__.pop(_REGISTRY, None)


def _show(multiplier: Multiplier) -> str:
    return f"per-row {tuple(multiplier.shape)}" if torch.is_tensor(multiplier) else repr(float(multiplier))


# -- hooks ---------------------------------------------------------------------------------------
def _add_to_output(output: Any, delta_fn) -> Any:
    """Return the module's output with the update added to its hidden states (never in place)."""
    if isinstance(output, tuple):
        hidden = output[0]
        return (hidden + delta_fn(hidden).to(hidden.dtype),) + output[1:]
    return output + delta_fn(output).to(output.dtype)


class InterventionHandle:
    """Hooks of one applied intervention; `.remove()` or leaving the `with` block removes them."""

    def __init__(self, intervention: "Intervention", model: nn.Module, multiplier: Multiplier,
                 layout: ArchSpec | Mapping | ModelLayout | None = None):
        self.intervention, self.model = intervention, model
        self.multiplier = multiplier
        self._hooks: list = []
        resolved = resolve_layout(model, layout)
        resolved.check_layer(intervention.layer)
        check_fits(intervention, resolved)
        registry = active(model)
        registry.check_free(intervention)
        form = intervention.strategy
        target = resolved.layer(intervention.layer) if form.hook == "layer" \
            else resolved.down_proj(intervention.layer)
        self._hooks.append(target.register_forward_hook(self._hook))
        registry.hooked[intervention] = self
        _attach(model, registry)

    @property
    def multiplier(self) -> Multiplier:
        return self._multiplier

    @multiplier.setter
    def multiplier(self, value: Multiplier) -> None:
        self._multiplier = check_multiplier(value)

    def _hook(self, module, args, output):
        if _is_zero(self._multiplier):
            return None
        x = args[0] if self.intervention.strategy.reads_input else None
        return _add_to_output(output, lambda h: self.intervention.delta(self._multiplier, x=x, like=h))

    def remove(self) -> None:
        """Remove every hook; safe to call twice."""
        while self._hooks:
            self._hooks.pop().remove()
        registry = active(self.model)
        if registry.hooked.get(self.intervention) is self:
            del registry.hooked[self.intervention]
            _attach(self.model, registry)

    def __enter__(self) -> "InterventionHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


# -- folding -------------------------------------------------------------------------------------
def fold(intervention: "Intervention", model: nn.Module, multiplier: float,
         layout: ArchSpec | Mapping | ModelLayout | None = None) -> None:
    """Write `W + m dW` and `b + m db` into the model's down projection (undo with `unfold`)."""
    resolved = resolve_layout(model, layout)
    registry = active(model)
    registry.check_free(intervention)
    resolved.check_layer(intervention.layer)
    check_fits(intervention, resolved)
    m = scalar_multiplier(multiplier)
    intervention.strategy.check_fold(resolved, intervention.layer)
    proj = resolved.down_proj(intervention.layer)
    saved = _Fold(proj, proj.weight.detach().clone(),
                  proj.bias.detach().clone() if proj.bias is not None else None)
    try:
        _write_update(intervention, proj, m)
    except BaseException:
        _restore(saved)  # never leave a half-written layer
        raise
    registry.folded[intervention] = saved
    _attach(model, registry)


def unfold(intervention: "Intervention", model: nn.Module) -> None:
    """Restore the down projection exactly as it was before `fold`."""
    registry = active(model)
    if intervention not in registry.folded:
        raise SplitPluginError("this intervention is not folded into this model")
    _restore(registry.folded.pop(intervention))
    _attach(model, registry)


@torch.no_grad()
def _write_update(intervention: "Intervention", proj: nn.Module, multiplier: float) -> None:
    """`W += m dW` (transposed for nn.Linear) and `b += m db` in place."""
    dw = intervention.delta_weight_matrix()
    if dw is not None:
        dw = dw.to(proj.weight.device)
        dw = dw if type(proj).__name__ == "Conv1D" else dw.T
        proj.weight.copy_((proj.weight.float() + multiplier * dw).to(proj.weight.dtype))
    db = intervention.delta_bias_vector()
    if db is not None:
        db = db.to(proj.weight.device)
        if proj.bias is None:
            proj.bias = nn.Parameter(proj.weight.new_zeros(db.shape[0]), requires_grad=False)
        proj.bias.copy_((proj.bias.float() + multiplier * db).to(proj.bias.dtype))


@torch.no_grad()
def _restore(saved: _Fold) -> None:
    """Put a down projection's saved weight and bias back (a bias fold added is removed)."""
    saved.proj.weight.copy_(saved.weight)
    if saved.bias is None:
        saved.proj.bias = None
    else:
        saved.proj.bias.copy_(saved.bias)


# -- fitting a model -----------------------------------------------------------------------------
def check_fits(intervention: "Intervention", layout: ModelLayout) -> None:
    """Refuse an intervention whose shapes or model type do not match the model's layer."""
    d_in, d_out = layout.down_proj_dims(intervention.layer)
    c = intervention.config
    reads_input = intervention.strategy.reads_input
    if c.hidden_size != d_out or (reads_input and c.intermediate_size != d_in):
        raise SplitPluginError(
            f"this {c.form} intervention was made for hidden size {c.hidden_size}"
            + (f" and intermediate size {c.intermediate_size}" if reads_input else "")
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
