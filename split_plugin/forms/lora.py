"""The lora form: `dW = (alpha / r) A @ B`, no db; an update of the down projection's weight."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import SplitPluginError
from .base import Form, Holder, Shapes


class LoraForm(Form):
    """`out + m (alpha / r) (x @ A) @ B` with A: [in, r], B: [r, out]; B = 0 at init (dW = 0)."""

    name = "lora"
    hook = "down_proj"
    factors = (0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0)

    def shape_fields(self, d_in: int, rank: int | None, alpha: float | None) -> dict:
        return {"intermediate_size": d_in, "rank": rank, "alpha": alpha}

    def check(self, config: Shapes) -> None:
        super().check(config)
        limit = min(config.hidden_size, config.intermediate_size)
        rank = config.rank
        if not isinstance(rank, int) or isinstance(rank, bool) or not 0 < rank <= limit:
            raise SplitPluginError(
                f"lora rank must be an integer in 1..{limit} (the smaller of the down projection's "
                f"dims {config.intermediate_size}x{config.hidden_size}), got {rank!r}"
            )
        if config.alpha is None:
            config.alpha = float(rank)

    def scaling(self, config: Shapes) -> float:
        return float(config.alpha) / config.rank

    def describe(self, config: Shapes) -> str:
        return f", rank={config.rank}, alpha={config.alpha}"

    def create(self, config: Shapes) -> dict[str, nn.Parameter]:
        lora_A = nn.Parameter(torch.empty(config.intermediate_size, config.rank))
        # the fan-in init nn.Linear uses; with B = 0 the update starts at exactly zero
        nn.init.kaiming_uniform_(lora_A.T, a=math.sqrt(5))
        return {"lora_A": lora_A, "lora_B": nn.Parameter(torch.zeros(config.rank, config.hidden_size))}

    def delta_weight(self, iv: Holder) -> torch.Tensor:
        return iv.config.scaling * (iv.lora_A @ iv.lora_B)

    def delta(self, iv: Holder, x: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        return (x.to(iv.lora_A.dtype) @ iv.lora_A) @ iv.lora_B * iv.config.scaling

    def peft_tensors(self, iv: Holder, multiplier: float) -> tuple[torch.Tensor, torch.Tensor]:
        """peft computes `W x + (alpha / r) B_p A_p x`, so A_p = A^T and B_p = m B^T."""
        return (iv.lora_A.detach().T.contiguous().float(),
                (float(multiplier) * iv.lora_B.detach().T).contiguous().float())
