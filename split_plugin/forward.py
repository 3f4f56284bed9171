"""Run a frozen model from layer L upward only, and capture what layers see and give.

The prefix below layer L does not depend on m.

`capture_prefix` runs the model once with layers L..N-1 swapped for recorders that keep the
arguments the model built for them (masks, rotary embeddings, per-layer-type masks) and stop
the forward after the last one; layers below L run for real. `run_suffix` then runs layers
L..N-1, the final norm and the LM head on the positions asked for, as often as needed, with
the rows optionally repeated so several multipliers share one batch.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .layers import ModelLayout
from .shared_prefix import SharedKeys, suffix_calls


class StopForward(Exception):
    """Raised from inside a forward once everything needed has been seen (the one such signal)."""


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
            raise StopForward
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


class PrefixStore:
    """Cached layer-L inputs per batch: in memory up to a size limit, else in a temp folder."""

    def __init__(self, limit_bytes: int):
        self.limit, self.used = limit_bytes, 0
        self.memory: dict[int, Prefix] = {}
        self.tmp: tempfile.TemporaryDirectory | None = None

    def put(self, key: int, prefix: Prefix) -> None:
        size = prefix.hidden.numel() * prefix.hidden.element_size() * 2
        if self.used + size <= self.limit:
            self.memory[key], self.used = prefix, self.used + size
            return
        if self.tmp is None:
            self.tmp = tempfile.TemporaryDirectory(prefix="split-prefix-")
        torch.save(prefix, self._path(key))

    def __contains__(self, key: int) -> bool:
        return key in self.memory or (self.tmp is not None and os.path.exists(self._path(key)))

    def _path(self, key: int) -> str:
        return os.path.join(self.tmp.name, f"{key}.pt")

    def get(self, key: int) -> Prefix:
        if key in self.memory:
            return self.memory[key]
        return torch.load(self._path(key), weights_only=False)

    def close(self) -> None:
        if self.tmp is not None:
            self.tmp.cleanup()


def capture_prefix(layout: ModelLayout, layer: int, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor | None = None,
                   position_ids: torch.Tensor | None = None) -> Prefix:
    """Run layers 0..L-1 once and record what layers L..N-1 would receive.

    `position_ids` (packed rows restart positions, see packing.py) go to the model as given.
    """
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
                extra = {"position_ids": position_ids} if position_ids is not None else {}
                layout.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra)
        except StopForward:
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


def _select_rows(obj: Any, batch: int, index: torch.Tensor) -> Any:
    """Pick rows `index` of every batch-dimension tensor inside nested call arguments."""
    if torch.is_tensor(obj):
        if obj.ndim >= 2 and obj.shape[0] == batch:
            return obj[index.to(obj.device)]
        return obj
    if isinstance(obj, tuple):
        return tuple(_select_rows(o, batch, index) for o in obj)
    if isinstance(obj, list):
        return [_select_rows(o, batch, index) for o in obj]
    if isinstance(obj, dict):
        return {k: _select_rows(v, batch, index) for k, v in obj.items()}
    return obj


def stacked_index(batch: int, repeat: int) -> torch.Tensor:
    """Row index that stacks a batch `repeat` times: row r of copy k is row k * batch + r."""
    return torch.arange(batch).repeat(repeat)


def run_suffix(layout: ModelLayout, prefix: Prefix, index: torch.Tensor | None = None,
               rows: torch.Tensor | None = None, positions: torch.Tensor | None = None,
               repeat: int = 1, shared: tuple[int, SharedKeys] | None = None) -> torch.Tensor:
    """Logits from layers L..N-1 on the cached prefix (hooks on those layers take effect).

    `index` picks (and may repeat) prefix rows, e.g. `stacked_index(B, k)` so per-row
    multipliers of shape [k * B] run k strengths in one pass (`repeat=k` is shorthand). With `rows` and `positions`
    (1-D, same length, indexing the selected batch) the final norm and the LM head run only
    there and the result is [n, vocab]; otherwise [batch, T, vocab]. `shared` = (n, keys): the
    first n tokens already ran (shared_prefix.record), so only positions n.. run here.
    """
    hidden, args_of = prefix.hidden, prefix.layer_args
    if index is None and repeat > 1:
        index = stacked_index(prefix.batch_size, repeat)
    if index is not None:
        batch = prefix.batch_size
        hidden = hidden[index.to(hidden.device)]
        args_of = [_select_rows(call, batch, index) for call in args_of]
    start = 0
    if shared is not None:
        start, keys = shared
        args_of = suffix_calls(args_of, start, hidden.shape[1], keys)
        hidden = hidden[:, start:]
    for offset, (args, kwargs) in enumerate(args_of):
        out = layout.layers[prefix.layer + offset](hidden, *args, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
    if rows is not None:
        hidden = hidden[rows, positions - start]
    elif start:
        raise ValueError("a shared prefix needs rows and positions: the logits before it are not computed")
    return layout.finish(hidden)


def capture(layout: ModelLayout, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
            outputs_of: Sequence[int], inputs_of: Sequence[int] = ()) -> tuple[dict, dict]:
    """({layer: output [B, T, d] fp32}, {layer: down projection input}); stops after the last layer.

    Hooks already on the model (a steering intervention) act first, so this sees steered states.
    """
    outputs: dict[int, torch.Tensor] = {}
    inputs: dict[int, torch.Tensor] = {}
    top = max([*outputs_of, *inputs_of])

    def keep_output(index: int):
        def hook(module, args, output):
            outputs[index] = (output[0] if isinstance(output, tuple) else output).float()
            if index == top:
                raise StopForward
        return hook

    def keep_input(index: int):
        def hook(module, args, output):
            inputs[index] = args[0]
        return hook

    handles = []
    try:
        for index in inputs_of:
            handles.append(layout.down_proj(index).register_forward_hook(keep_input(index)))
        for index in sorted(set(outputs_of) | {top}):
            handles.append(layout.layer(index).register_forward_hook(keep_output(index)))
        with torch.no_grad():
            layout.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return {i: outputs[i] for i in outputs_of}, inputs


def layer_outputs(layout: ModelLayout, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """Hidden states ([B, T, d], fp32) leaving each of `layers`; the forward stops after the last."""
    return capture(layout, input_ids, attention_mask, layers)[0]
