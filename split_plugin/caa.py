"""CAA: the mean difference of layer outputs over positive and negative answer tokens."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .config import TrainConfig
from .data import ContrastivePair, encode_pairs
from .forward import layer_outputs
from .intervention import Intervention
from .layers import ModelLayout, resolve_layout


@torch.no_grad()
def mean_differences(layout: ModelLayout, tokenizer, pairs: Sequence[ContrastivePair], layers: Sequence[int],
                     batch_size: int, max_length: int, system_prompt: str | None) -> dict[int, torch.Tensor]:
    """Per layer: mean over pairs of (mean output over positive answer tokens - same for negative)."""
    diffs: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    device = next(layout.model.parameters()).device
    for start in range(0, len(pairs), batch_size):
        batch = encode_pairs(tokenizer, list(pairs[start:start + batch_size]), max_length=max_length,
                             system_prompt=system_prompt).to(device)
        states = layer_outputs(layout, batch.input_ids, batch.attention_mask, layers)
        answer = (batch.labels != -100).unsqueeze(-1).float()
        for i in layers:
            means = (states[i] * answer).sum(1) / answer.sum(1).clamp(min=1)
            positive, negative = batch.split_pairs(means)
            diffs[i].append(positive - negative)
    return {i: torch.cat(d).mean(0) for i, d in diffs.items()}


def mean_difference_vector(model: nn.Module, tokenizer, pairs: Sequence[ContrastivePair],
                           config: TrainConfig, layout: ModelLayout | None = None) -> Intervention:
    """CAA: mean over pairs of (mean layer-L output over positive answer tokens - same for negative)."""
    layout = resolve_layout(model, layout)
    intervention = Intervention.for_model(model, "vector", config.layer, layout=layout)
    means = mean_differences(layout, tokenizer, pairs, [config.layer], config.batch_size,
                             config.max_length, config.system_prompt)
    with torch.no_grad():
        intervention.vector.copy_(means[config.layer])
    intervention.config.concept = pairs[0].concept
    return intervention
