"""Matched strengths: multipliers that give every method the same edit size.

A vector trained with factors 2..20 and a CAA mean difference live on different scales, so
comparing them at equal m says nothing. We compare at equal relative edit norm
`|m * delta| / median |h|`, where h is the layer-L output on generic text and delta the
update at m = 1 on the same tokens (input dependent for lora/local_weight: its median).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .data import encode_texts
from .forward import capture
from .intervention import Intervention
from .layers import LayoutLike, resolve_layout


@torch.no_grad()
def edit_ratio(model: nn.Module, tokenizer, intervention: Intervention, text: str,
               max_length: int = 128, max_windows: int = 4, layout: LayoutLike = None) -> float:
    """median |delta at m=1| / median |h_L| over the tokens of `text`."""
    layout = resolve_layout(model, layout)
    ids, mask, _ = encode_texts(tokenizer, [text], max_length=max_length)
    ids, mask = ids[:max_windows], mask[:max_windows]
    device = next(model.parameters()).device
    layer = intervention.layer
    outputs, inputs = capture(layout, ids.to(device), mask.to(device), [layer], [layer])
    real = mask.to(device).bool()
    h = outputs[layer][real]
    x = inputs[layer][real] if intervention.strategy.reads_input else None
    delta = intervention.delta(1.0, x=x, like=h)
    return float(delta.norm(dim=-1).median() / h.norm(dim=-1).median())


def matched_multipliers(ratio_at_one: float, targets: Sequence[float]) -> list[float]:
    """Multipliers giving relative edit norms `targets` (signs kept), given the ratio at m = 1."""
    if ratio_at_one <= 0:
        return [0.0 for _ in targets]
    return [t / ratio_at_one for t in targets]
