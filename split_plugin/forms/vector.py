"""The vector form: db = v, no dW, so `h_out = h + m v` at the decoder layer's output."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import SplitPluginError
from .base import Form, Holder, Layout, Shapes


class VectorForm(Form):
    """A steering vector v ([hidden]) added to layer L's output: `h + m v` (db = v, dW = 0)."""

    name = "vector"
    hook = "layer"
    factors = (2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 20.0)

    def create(self, config: Shapes) -> dict[str, nn.Parameter]:
        return {"vector": nn.Parameter(torch.zeros(config.hidden_size))}

    def delta_bias(self, iv: Holder) -> torch.Tensor:
        return iv.vector

    def delta(self, iv: Holder, x: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        return iv.vector.expand(*like.shape[:-1], -1)

    def check_fold(self, layout: Layout, layer: int) -> None:
        if layout.post_mlp_norm(layer) is not None:
            raise SplitPluginError(
                f"the vector form cannot be folded exactly into a {layout.model_type} model: a "
                f"norm ({layout.spec.post_mlp_norm}) follows the down projection; apply it as a hook"
            )
