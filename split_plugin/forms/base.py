"""The `Form` protocol: what an intervention's form must say about its update."""
from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from ..errors import SplitPluginError


class Shapes(Protocol):
    """What a form reads of an InterventionConfig (and may fill in: lora's alpha)."""

    hidden_size: int
    intermediate_size: int | None
    rank: int | None
    alpha: float | None


#: the Intervention holding the form's tensors as attributes (an nn.Module with `.config`)
Holder = nn.Module
#: the resolved ModelLayout of the model a form folds into
Layout = Any


class Form:
    """One parameterisation of `h_out = (W + m dW) x + (b + m db)`; subclasses state theirs.

    `hook` is where the update is added: "layer" (to the decoder layer's output, with no
    input) or "down_proj" (to the down projection's output, reading its input x).
    `factors` are the default training strengths |m| (TrainConfig uses them when none given).
    """

    name: ClassVar[str]
    hook: ClassVar[str]
    factors: ClassVar[tuple[float, ...]]

    @property
    def reads_input(self) -> bool:
        """Whether the update depends on the down projection's input x."""
        return self.hook == "down_proj"

    # -- configuration --------------------------------------------------------------------
    def shape_fields(self, d_in: int, rank: int | None, alpha: float | None) -> dict:
        """The InterventionConfig fields this form sets from the layer's input width and its options."""
        return {"intermediate_size": d_in if self.reads_input else None, "rank": None, "alpha": None}

    def check(self, config: Shapes) -> None:
        """Refuse a config this form cannot use (and fill in its defaults)."""
        if self.reads_input and not config.intermediate_size:
            raise SplitPluginError(f"the {self.name} form needs intermediate_size (the down "
                                   "projection's input width)")

    def scaling(self, config: Shapes) -> float:
        """A constant factor on dW (lora's alpha / rank); 1.0 unless the form says otherwise."""
        return 1.0

    def describe(self, config: Shapes) -> str:
        """Form-specific settings for `repr` (empty when there are none)."""
        return ""

    # -- parameters and the update ----------------------------------------------------------
    def create(self, config: Shapes) -> dict[str, nn.Parameter]:
        """The trainable tensors, in fp32, initialised so the update starts at exactly zero."""
        raise NotImplementedError

    def delta_weight(self, iv: Holder) -> torch.Tensor | None:
        """The dense dW ([in, out]) at m = 1, or None when the form has none."""
        return None

    def delta_bias(self, iv: Holder) -> torch.Tensor | None:
        """db ([out]) at m = 1, or None when the form has none."""
        return None

    def delta(self, iv: Holder, x: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """The update at m = 1 in the trainable tensors' dtype, shaped like `like` (the hooked module's output)."""
        raise NotImplementedError

    # -- folding and export -------------------------------------------------------------------
    def check_fold(self, layout: Layout, layer: int) -> None:
        """Refuse to fold where writing dW and db into the weights would not equal the hook."""

    def peft_tensors(self, iv: Holder, multiplier: float) -> tuple[torch.Tensor, torch.Tensor]:
        """peft's (lora_A.weight, lora_B.weight) at strength m; only a low-rank form has them."""
        raise SplitPluginError(f"only the lora form exports as a peft adapter, not {self.name}")
