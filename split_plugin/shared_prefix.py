"""Tokens every row starts with run through layers L.. once per multiplier, not once per row.

Chat-templated prompts open with the same system turn and user header (35 of the embedded
model's ~70 prompt tokens). Above the intervention's layer those states depend on the
multiplier but not on the row, so for a batch of B rows at k distinct multipliers the common
part runs k times instead of k x B: its keys and values are recorded per layer (`record`), and
the rest of each row attends to them as a key/value cache prefix (`suffix_calls`). Only the
keyword arguments the decoder layers of common Hugging Face models receive are sliced
(attention_mask, position_embeddings, position_ids, cache_position); `supported` says whether
a prefix's calls are of that kind, and callers check the result once against the plain path.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .layers import ModelLayout

if TYPE_CHECKING:
    from .forward import Prefix

CACHE_KEYS = ("cache", "past_key_values", "layer_past")
MIN_SHARED = 8  # below this the second pass costs more than it saves


class SharedKeys:
    """Stands in for a layer cache: records keys/values, or prepends the recorded ones per row."""

    def __init__(self, kv: dict | None = None, rows: torch.Tensor | None = None):
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {} if kv is None else kv
        self.rows = rows  # the recorded row each reading row continues; None while recording

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        if self.rows is None:
            self.kv[layer_idx] = (key, value)
            return key, value
        k, v = self.kv[layer_idx]
        return torch.cat([k[self.rows], key], -2), torch.cat([v[self.rows], value], -2)

    def reading(self, rows: torch.Tensor) -> "SharedKeys":
        """The same recorded keys, prepended to row j from recorded row rows[j]."""
        return SharedKeys(self.kv, rows)


def supported(prefix: Prefix) -> bool:
    """Whether every layer call is keyword-only with a 4D mask and a cache slot this module can fill."""
    return all(not args and torch.is_tensor(kwargs.get("attention_mask"))
               and kwargs["attention_mask"].ndim == 4 and any(k in kwargs for k in CACHE_KEYS)
               for args, kwargs in prefix.layer_args)


def _slice(name: str, value: Any, rows: slice | torch.Tensor, start: int, stop: int) -> Any:
    """The part of one layer keyword argument that positions start..stop-1 of `rows` need."""
    if name == "attention_mask":
        return value[rows][:, :, start:stop, :stop]
    if name == "position_embeddings":
        return tuple(t[rows][:, start:stop] for t in value)
    if name == "position_ids":
        return value[rows][:, start:stop]
    if name == "cache_position":
        return value[start:stop]
    return value


def _call(kwargs: dict, rows, start: int, stop: int, cache: SharedKeys) -> dict:
    out = {name: _slice(name, value, rows, start, stop) for name, value in kwargs.items()}
    for key in CACHE_KEYS:
        if key in out:
            out[key] = cache
    return out


def record(layout: ModelLayout, prefix: Prefix, length: int, copies: int) -> SharedKeys:
    """Run layers L.. on the first `length` tokens, `copies` rows (one per multiplier); keep keys/values."""
    cache = SharedKeys()
    hidden = prefix.hidden[:1, :length].expand(copies, -1, -1)
    first = torch.zeros(copies, dtype=torch.long, device=hidden.device)
    for offset, (_, kwargs) in enumerate(prefix.layer_args):
        out = layout.layers[prefix.layer + offset](hidden, **_call(kwargs, first, 0, length, cache))
        hidden = out[0] if isinstance(out, tuple) else out
    return cache


@torch.no_grad()
def run_layers(layout: ModelLayout, hidden: torch.Tensor, calls: list, wanted: tuple[int, ...],
               length: int) -> dict[int, torch.Tensor]:
    """{i: hidden states entering layer i} for i in `wanted`, from the embeddings `hidden` ([B, T, d])
    and every layer's recorded `calls`; the leading `length` tokens (the same in every row) run for
    row 0 only and the rest of each row reads their keys and values."""
    rows, width = hidden.shape[:2]
    cache, first = SharedKeys(), torch.zeros(1, dtype=torch.long, device=hidden.device)
    reading = cache.reading(torch.zeros(rows, dtype=torch.long, device=hidden.device))
    head, tail = hidden[:1, :length], hidden[:, length:]
    states = {0: hidden} if 0 in wanted else {}
    for i in range(max(wanted)):
        kwargs = calls[i][1]
        head = _hidden(layout.layers[i](head, **_call(kwargs, first, 0, length, cache)))
        tail = _hidden(layout.layers[i](tail, **_call(kwargs, slice(None), length, width, reading)))
        if i + 1 in wanted:
            states[i + 1] = torch.cat([head.expand(rows, -1, -1), tail], 1)
    return states


def _hidden(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def suffix_calls(calls: list, length: int, width: int, cache: SharedKeys) -> list:
    """Layer calls for positions `length`..`width`-1 of (already row-selected) `calls`, reading `cache`."""
    return [((), _call(kwargs, slice(None), length, width, cache)) for _, kwargs in calls]


def common_length(input_ids: torch.Tensor, first_scored: int) -> int:
    """How many leading tokens every row shares (kept below the first scored position), 0 if few."""
    same = (input_ids == input_ids[:1]).all(0)
    length = int(same.long().cumprod(0).sum())
    length = min(length, first_scored)
    return length if length >= MIN_SHARED and input_ids.shape[0] > 1 else 0
