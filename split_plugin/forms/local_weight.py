"""The local_weight form: a dense dW ([in, out]) and db ([out]) on the down projection."""
from __future__ import annotations

import torch
from torch import nn

from .base import Form, Holder, Shapes


class LocalWeightForm(Form):
    """`out + m (x @ dW + db)`: the full update of the down projection, both zero at init."""

    name = "local_weight"
    hook = "down_proj"
    factors = (0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0)

    def create(self, config: Shapes) -> dict[str, nn.Parameter]:
        return {"delta_weight": nn.Parameter(torch.zeros(config.intermediate_size, config.hidden_size)),
                "delta_bias": nn.Parameter(torch.zeros(config.hidden_size))}

    def delta_weight(self, iv: Holder) -> torch.Tensor:
        return iv.delta_weight

    def delta_bias(self, iv: Holder) -> torch.Tensor:
        return iv.delta_bias

    def delta(self, iv: Holder, x: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        return x.to(iv.delta_weight.dtype) @ iv.delta_weight + iv.delta_bias
