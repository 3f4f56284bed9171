"""Several interventions at once, each at its own strength, and arithmetic on interventions.

A composition adds every term's update: at layer `L` the model computes
`h_out = (W + sum_i m_i dW_i) x + (b + sum_i m_i db_i)`, so steering with a composition equals
applying its terms one after the other (on the same or different layers), and folding it
writes the summed update. Arithmetic builds one intervention from others of the same form and
layer: `a + b`, `a - b`, `k * a`, `-a` (for lora, a sum stacks the two ranks).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Union

import torch
from torch import nn

from .errors import SplitPluginError
from .intervention import Intervention, InterventionConfig
from .steering import Multiplier, check_multiplier
from .layers import ArchSpec, ModelLayout, resolve_layout

Term = tuple[Intervention, Multiplier]
Steering = Union[Intervention, "Composition"]


@dataclass(frozen=True)
class Composition:
    """Interventions with their own multipliers, applied together (`compose(...)` builds one)."""

    terms: tuple[Term, ...]

    def steer(self, model: nn.Module, layout: ArchSpec | Mapping | ModelLayout | None = None,
              scale: Multiplier = 1.0) -> "ComposedHandle":
        """Hook every term into `model` (each at `scale * m_i`); a context manager like `Intervention.steer`."""
        return ComposedHandle(self, model, layout, scale)

    def fold(self, model: nn.Module, layout: ArchSpec | Mapping | None = None) -> None:
        """Fold every term into the weights in order; if one fails the earlier ones are undone."""
        done: list[Intervention] = []
        try:
            for intervention, multiplier in self.terms:
                intervention.fold(model, multiplier, layout=layout)
                done.append(intervention)
        except BaseException:
            for intervention in reversed(done):
                intervention.unfold(model)
            raise

    def unfold(self, model: nn.Module) -> None:
        """Undo `fold` (in reverse order, so every layer gets back its exact weights)."""
        for intervention, _ in reversed(self.terms):
            intervention.unfold(model)

    def scaled(self, factor: float) -> "Composition":
        """The same terms with every multiplier times `factor`."""
        return Composition(tuple((i, m * factor) for i, m in self.terms))

    @property
    def layers(self) -> list[int]:
        return sorted({i.layer for i, _ in self.terms})

    def describe(self) -> list[dict]:
        """One dict per term (config and multiplier), for metadata and model cards."""
        return [{**i.config.to_dict(), "multiplier": _plain(m)} for i, m in self.terms]


def _plain(multiplier: Multiplier) -> float | list[float]:
    return multiplier.tolist() if torch.is_tensor(multiplier) else float(multiplier)


def compose(*terms: Intervention | Term | Composition) -> Composition:
    """Stack interventions: `compose((a, 4.0), (b, -2.0))`; a bare intervention means m = 1."""
    flat: list[Term] = []
    for term in terms:
        if isinstance(term, Composition):
            flat.extend(term.terms)
        elif isinstance(term, Intervention):
            flat.append((term, 1.0))
        elif isinstance(term, (tuple, list)) and len(term) == 2 and isinstance(term[0], Intervention):
            flat.append((term[0], check_multiplier(term[1])))
        else:
            raise SplitPluginError(f"compose takes interventions or (intervention, multiplier) pairs, "
                                   f"got {term!r}")
    if not flat:
        raise SplitPluginError("compose needs at least one intervention")
    ids = [id(i) for i, _ in flat]
    if len(set(ids)) != len(ids):
        raise SplitPluginError("the same intervention appears twice in a composition; give it once "
                               "with the summed multiplier")
    return Composition(tuple(flat))


def as_composition(steering: Steering, multiplier: Multiplier = 1.0) -> Composition:
    """An intervention at `multiplier`, or a composition scaled by `multiplier`."""
    if isinstance(steering, Composition):
        return steering if _is_one(multiplier) else steering.scaled(float(multiplier))
    if isinstance(steering, Intervention):
        return compose((steering, multiplier))
    raise SplitPluginError(f"expected an Intervention or a Composition, got {type(steering).__name__}")


def _is_one(multiplier: Multiplier) -> bool:
    return not torch.is_tensor(multiplier) and float(multiplier) == 1.0


class ComposedHandle:
    """The hooks of every term; `.remove()` or leaving the `with` block removes them all."""

    def __init__(self, composition: Composition, model: nn.Module,
                 layout: ArchSpec | Mapping | ModelLayout | None, scale: Multiplier):
        resolved = layout if isinstance(layout, ModelLayout) else resolve_layout(model, layout)
        self.handles: list = []
        try:
            for intervention, multiplier in composition.terms:
                self.handles.append(intervention.steer(model, multiplier * scale, layout=resolved))
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        while self.handles:
            self.handles.pop().remove()

    def __enter__(self) -> "ComposedHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


# -- arithmetic --------------------------------------------------------------------------------
def scale(intervention: Intervention, factor: float) -> Intervention:
    """`factor * a`: the same form and layer, with the update multiplied by `factor`."""
    factor = _factor(factor)
    new = Intervention(InterventionConfig.from_dict(intervention.config.to_dict()))
    own = dict(intervention.named_parameters())
    with torch.no_grad():
        for name, param in new.named_parameters():
            scaled = intervention.form != "lora" or name == "lora_B"  # lora: A @ (k B)
            param.copy_(own[name].detach() * factor if scaled else own[name].detach())
    return new


def add(a: Intervention, b: Intervention) -> Intervention:
    """`a + b`: one intervention whose update is the sum (same form, layer and shapes)."""
    ca, cb = a.config, b.config
    if (ca.form, ca.layer, ca.hidden_size, ca.intermediate_size) != \
            (cb.form, cb.layer, cb.hidden_size, cb.intermediate_size):
        raise SplitPluginError(
            f"only interventions of one form and layer add up: got {ca.form} at layer {ca.layer} and "
            f"{cb.form} at layer {cb.layer}; use compose((a, m_a), (b, m_b)) to apply both")
    if ca.form == "lora":
        return _add_lora(a, b)
    new = Intervention(InterventionConfig.from_dict({**ca.to_dict(), "concept": _joined(ca, cb)}))
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    with torch.no_grad():
        for name, param in new.named_parameters():
            param.copy_(pa[name].detach() + pb[name].detach().to(pa[name].device))
    return new


def _add_lora(a: Intervention, b: Intervention) -> Intervention:
    """`s_a A_a B_a + s_b A_b B_b = [A_a A_b] [s_a B_a; s_b B_b]` at rank r_a + r_b, alpha = rank."""
    rank = a.config.rank + b.config.rank
    limit = min(a.config.hidden_size, a.config.intermediate_size)
    if rank > limit:
        raise SplitPluginError(f"the sum of two lora interventions has rank {a.config.rank} + "
                               f"{b.config.rank} = {rank} > {limit}; fold them, or export the "
                               "composition with format='hf'")
    config = {**a.config.to_dict(), "rank": rank, "alpha": float(rank), "concept": _joined(a.config, b.config)}
    new = Intervention(InterventionConfig.from_dict(config))
    with torch.no_grad():
        new.lora_A.copy_(torch.cat([a.lora_A.detach(), b.lora_A.detach().to(a.lora_A.device)], dim=1))
        new.lora_B.copy_(torch.cat([a.config.scaling * a.lora_B.detach(),
                                    b.config.scaling * b.lora_B.detach().to(a.lora_B.device)], dim=0))
    return new


def _joined(ca: InterventionConfig, cb: InterventionConfig) -> str | None:
    names = [c for c in (ca.concept, cb.concept) if c]
    return " + ".join(dict.fromkeys(names)) or None


def _factor(factor: object) -> float:
    if isinstance(factor, (bool, str)) or not hasattr(factor, "__float__") \
            or not math.isfinite(float(factor)):
        raise SplitPluginError(f"an intervention can be multiplied by a finite number only, got {factor!r}")
    return float(factor)


def layer_updates(composition: Composition) -> dict[int, dict[str, torch.Tensor]]:
    """Per layer, the summed `dW` ([in, out], `m_i dW_i`), `db` (local_weight biases) and `v` (vectors)."""
    out: dict[int, dict[str, torch.Tensor]] = {}
    for intervention, multiplier in composition.terms:
        if torch.is_tensor(multiplier) and multiplier.ndim > 0:
            raise SplitPluginError("a per-row multiplier cannot be written into weights; give one "
                                   f"number per intervention, got a tensor of shape {tuple(multiplier.shape)}")
        m = float(multiplier)
        slot = out.setdefault(intervention.layer, {})
        dw = intervention.delta_weight_matrix()
        if dw is not None:
            _accumulate(slot, "dW", m * dw.detach().float().cpu())
        db = intervention.delta_bias_vector()
        if db is not None:
            _accumulate(slot, "v" if intervention.form == "vector" else "db", m * db.detach().float().cpu())
    return out


def _accumulate(slot: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    slot[key] = slot[key] + value if key in slot else value

