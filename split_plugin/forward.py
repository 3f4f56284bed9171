"""Run a frozen model from layer L upward only, and capture what layers see and give.

The prefix below layer L does not depend on m.

`capture_prefix` runs the model once with layers L..N-1 swapped for recorders that keep the
arguments the model built for them (masks, rotary embeddings, per-layer-type masks) and stop
the forward after the last one; layers below L run for real. `run_suffix` then runs layers
L..N-1, the final norm and the LM head on the positions asked for, as often as needed, with
the rows optionally repeated so several multipliers share one batch.

Two more pieces of work are skipped where they cannot change what is read:
- layer L itself, when nothing hooks inside it: an intervention on its output (the vector
  form) is a forward hook on the layer, replayed on the layer's cached unsteered output;
- the top layer's MLP away from the scored positions, when only those reach the LM head: the
  MLP acts on each position alone, and the other positions' outputs are never read.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .layers import ModelLayout
from .precision import upcast
from .safety import hooked_modules
from .shared_prefix import SharedKeys, common_length, run_layers, suffix_calls, supported


class StopForward(Exception):
    """Raised from inside a forward once everything needed has been seen (the one such signal)."""


class _Recorder(nn.Module):
    """Stands in for a decoder layer: keeps its call arguments, passes hidden states through."""

    def __init__(self, layer: nn.Module, store: list, last: bool, outputs: list | None = None):
        super().__init__()
        object.__setattr__(self, "_layer", layer)  # not a submodule: never trained or moved
        self._store, self._last, self._outputs = store, last, outputs

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._layer, name)  # e.g. `attention_type`, read by some model loops

    def forward(self, hidden, *args, **kwargs):
        self._store.append((args, kwargs))
        if self._outputs is not None:  # the layer's own forward: hooks on the layer itself do not run
            self._outputs.append(self._layer.forward(hidden, *args, **kwargs))
        if self._last:
            raise StopForward
        return hidden


@dataclass
class Prefix:
    """Input hidden states of layer L and the arguments the model passed to layers L..N-1."""

    layer: int
    hidden: torch.Tensor
    layer_args: list[tuple[tuple, dict]]
    output: torch.Tensor | None = None  # layer L's unhooked output, where nothing hooks inside it

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
        copies = 2 if prefix.output is None else 3
        size = prefix.hidden.numel() * prefix.hidden.element_size() * copies
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
    Leading tokens every row shares (a chat template's system turn) run once for all rows
    where nothing hooks the layers below L (shared_prefix.run_layers).
    """
    layout.check_layer(layer)
    keep_output = _hook_free(layout.layers[layer], inside_only=True)
    length = common_length(input_ids, input_ids.shape[1] - 1)
    if length and all(_hook_free(layout.layers[i]) for i in range(layer + keep_output)):
        calls = _record(layout, 0, input_ids, attention_mask, position_ids, keep_output=False)
        if supported(calls):  # every layer's arguments, and no layer run yet
            states = run_layers(layout, calls.hidden, calls.layer_args, (layer, layer + keep_output), length)
            return Prefix(layer=layer, hidden=states[layer], layer_args=calls.layer_args[layer:],
                          output=states[layer + 1] if keep_output else None)
    return _record(layout, layer, input_ids, attention_mask, position_ids, keep_output)


def _record(layout: ModelLayout, layer: int, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
            position_ids: torch.Tensor | None, keep_output: bool) -> Prefix:
    """The model's own forward up to layer L, recording the arguments of layers L..N-1."""
    layers = layout.layers
    store: list = []
    hidden_in: list[torch.Tensor] = []
    outputs: list | None = [] if keep_output else None
    originals = [layers[i] for i in range(layer, len(layers))]
    try:
        for i in range(layer, len(layers)):
            layers[i] = _Recorder(originals[i - layer], store, last=i == len(layers) - 1,
                                  outputs=outputs if i == layer else None)
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
    output = outputs[0] if outputs and torch.is_tensor(outputs[0]) else None
    return Prefix(layer=layer, hidden=hidden_in[0], layer_args=store, output=output)


def _hook_free(module: nn.Module, inside_only: bool = False) -> bool:
    """No hooks in `module` (or only forward hooks on `module` itself, with `inside_only`), none global."""
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return False
    if inside_only:
        return not module._forward_pre_hooks and all(not (m._forward_hooks or m._forward_pre_hooks)
                                                     for m in module.modules() if m is not module)
    return not hooked_modules(module)


def _replay(layer: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
    """What calling `layer` returns, given its unhooked `output`: its own forward hooks, in order."""
    for key, hook in layer._forward_hooks.items():
        result = hook(layer, args, kwargs, output) if layer._forward_hooks_with_kwargs.get(key) \
            else hook(layer, args, output)
        output = output if result is None else result
    return output


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
    hidden, args_of, cached = prefix.hidden, prefix.layer_args, prefix.output
    if index is None and repeat > 1:
        index = stacked_index(prefix.batch_size, repeat)
    if index is not None:
        batch = prefix.batch_size
        hidden = hidden[index.to(hidden.device)]
        cached = None if cached is None else cached[index.to(cached.device)]
        args_of = [_select_rows(call, batch, index) for call in args_of]
    start = 0
    if shared is not None:
        start, keys = shared
        args_of = suffix_calls(args_of, start, hidden.shape[1], keys)
        hidden, cached = hidden[:, start:], None if cached is None else cached[:, start:]
    top = len(args_of) - 1
    for offset, (args, kwargs) in enumerate(args_of):
        layer = layout.layers[prefix.layer + offset]
        if offset == 0 and cached is not None and _hook_free(layer, inside_only=True):
            out = _replay(layer, (hidden, *args), kwargs, cached)
        elif offset == top and rows is not None:
            with _mlp_only_at(layout.mlp(prefix.layer + offset), layer, rows, positions - start):
                out = layer(hidden, *args, **kwargs)
        else:
            out = layer(hidden, *args, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
    if rows is not None:
        hidden = hidden[rows, positions - start]
    elif start:
        raise ValueError("a shared prefix needs rows and positions: the logits before it are not computed")
    return layout.finish(hidden)


class _ReadPositions(nn.Module):
    """Stands in for the top layer's MLP: runs it at the read positions only, zeros elsewhere."""

    def __init__(self, mlp: nn.Module, rows: torch.Tensor, positions: torch.Tensor):
        super().__init__()
        object.__setattr__(self, "_mlp", mlp)  # not a submodule: never trained or moved
        self._rows, self._positions = rows, positions

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if x.ndim != 3:  # not [batch, positions, hidden]: positions cannot be picked
            return self._mlp(x, *args, **kwargs)
        # each position once: a repeated one would take the gradient of each copy
        flat = torch.unique(self._rows * x.shape[1] + self._positions)
        out = self._mlp(x.reshape(-1, x.shape[-1])[flat].unsqueeze(0), *args, **kwargs)
        if not torch.is_tensor(out):  # e.g. an MoE block that also returns router logits
            return self._mlp(x, *args, **kwargs)
        full = x.new_zeros(x.shape[0] * x.shape[1], out.shape[-1], dtype=out.dtype)
        return full.index_put((flat,), out[0]).view(*x.shape[:-1], -1)


@contextlib.contextmanager
def _mlp_only_at(mlp: nn.Module, layer: nn.Module, rows: torch.Tensor, positions: torch.Tensor):
    """Swap `layer`'s MLP for one that runs at (rows, positions) only, where nothing hooks it."""
    name = next((n for n, m in layer.named_children() if m is mlp), None)
    if name is None or not _hook_free(mlp):
        yield
        return
    setattr(layer, name, _ReadPositions(mlp, rows, positions))
    try:
        yield
    finally:
        setattr(layer, name, mlp)


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
            outputs[index] = upcast(output[0] if isinstance(output, tuple) else output)
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
