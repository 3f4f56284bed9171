"""Run a frozen model from layer L upward only: the prefix below L does not depend on m.

`capture_prefix` runs the model once with layers L..N-1 swapped for recorders that keep the
arguments the model built for them (masks, rotary embeddings, per-layer-type masks) and stop
the forward after the last one; layers below L run for real. `run_suffix` then runs layers
L..N-1, the final norm and the LM head on the positions asked for, as often as needed, with
the rows optionally repeated so several multipliers share one batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .layers import ModelLayout


class _StopForward(Exception):
    """Raised by the last recorder: nothing after the layers is needed."""


class _Recorder(nn.Module):
    """Stands in for a decoder layer: keeps its call arguments, passes hidden states through."""

    def __init__(self, layer: nn.Module, store: list, last: bool):
        super().__init__()
        object.__setattr__(self, "_layer", layer)  # not a submodule: never trained or moved
        self._store, self._last = store, last

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._layer, name)  # e.g. `attention_type`, read by some model loops

    def forward(self, hidden, *args, **kwargs):
        self._store.append((args, kwargs))
        if self._last:
            raise _StopForward
        return hidden


@dataclass
class Prefix:
    """Input hidden states of layer L and the arguments the model passed to layers L..N-1."""

    layer: int
    hidden: torch.Tensor
    layer_args: list[tuple[tuple, dict]]

    @property
    def batch_size(self) -> int:
        return self.hidden.shape[0]


def capture_prefix(layout: ModelLayout, layer: int, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor | None = None) -> Prefix:
    """Run layers 0..L-1 once and record what layers L..N-1 would receive."""
    layout.check_layer(layer)
    layers = layout.layers
    store: list = []
    hidden_in: list[torch.Tensor] = []
    originals = [layers[i] for i in range(layer, len(layers))]
    try:
        for i in range(layer, len(layers)):
            layers[i] = _Recorder(originals[i - layer], store, last=i == len(layers) - 1)
        first = layers[layer]
        pre = first.register_forward_pre_hook(lambda mod, args: hidden_in.append(args[0]))
        try:
            with torch.no_grad():
                layout.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
        finally:
            pre.remove()
    finally:
        for i, original in enumerate(originals):
            layers[layer + i] = original
    if len(store) != len(originals) or not hidden_in:
        raise RuntimeError("the model's forward did not call its decoder layers in order; "
                           "the prefix cache cannot be used with this model")
    return Prefix(layer=layer, hidden=hidden_in[0], layer_args=store)


def _repeat_rows(obj: Any, batch: int, times: int) -> Any:
    """Repeat batch-dimension tensors inside nested args `times` times along dim 0."""
    if times == 1:
        return obj
    if torch.is_tensor(obj):
        if obj.ndim >= 2 and obj.shape[0] == batch:
            return obj.repeat(times, *([1] * (obj.ndim - 1)))
        return obj
    if isinstance(obj, tuple):
        return tuple(_repeat_rows(o, batch, times) for o in obj)
    if isinstance(obj, list):
        return [_repeat_rows(o, batch, times) for o in obj]
    if isinstance(obj, dict):
        return {k: _repeat_rows(v, batch, times) for k, v in obj.items()}
    return obj


def run_suffix(layout: ModelLayout, prefix: Prefix, rows: torch.Tensor | None = None,
               positions: torch.Tensor | None = None, repeat: int = 1) -> torch.Tensor:
    """Logits from layers L..N-1 on the cached prefix (hooks on those layers take effect).

    `repeat` stacks the batch that many times (row r of copy k is row k*B + r), so per-row
    multipliers of shape [repeat * B] run several strengths in one pass. With `rows` and
    `positions` (1-D, same length, indexing the repeated batch), the final norm and the LM head
    run only there and the result is [n, vocab]; otherwise [repeat * B, T, vocab].
    """
    batch = prefix.batch_size
    hidden = prefix.hidden.repeat(repeat, *([1] * (prefix.hidden.ndim - 1))) if repeat > 1 else prefix.hidden
    for offset, (args, kwargs) in enumerate(prefix.layer_args):
        out = layout.layers[prefix.layer + offset](
            hidden, *_repeat_rows(args, batch, repeat), **_repeat_rows(kwargs, batch, repeat))
        hidden = out[0] if isinstance(out, tuple) else out
    if rows is not None:
        hidden = hidden[rows, positions]
    return layout.finish(hidden)
