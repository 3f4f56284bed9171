"""What sweeps of one model share: each batch's layers below L, its unsteered scores, the packing check.

The layers below an intervention's layer and the unsteered pass (m = 0) do not depend on the
intervention. When several interventions are swept over the same pairs and held-out text (the
demo evaluates four methods on one validation set, one test set and one held-out text), a
`SweepCache` passed to each sweep runs them once per batch instead of once per intervention, and
checks packing once per model instead of once per sweep. Batches are recognised by their token
ids, so the pairs and text must be encoded the same way (same batch size and max length).
"""
from __future__ import annotations

import hashlib
import weakref
from typing import Callable

import torch
from torch import nn

from ..errors import SplitPluginError
from ..forward import Prefix
from ..scoring import ScoringBatch


def _digest(*tensors: torch.Tensor | None) -> str:
    """A hash of the tensors' shapes, dtypes and bytes (None counts as a value)."""
    h = hashlib.sha1()
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class SweepCache:
    """Per-batch states several sweeps of one unchanged model can reuse; pass it as `cache=`.

    Valid while the model stays as it is (weights and hooks): make a new one after changing it.
    Memory grows with the batches seen (one layer-L input per batch), so use one per comparison.
    """

    def __init__(self) -> None:
        self._model: weakref.ref | None = None
        self.prefixes: dict[tuple[int, str], Prefix] = {}
        self.unsteered: dict[str, torch.Tensor] = {}
        self.packing: bool | None = None  # packed rows agree with unpacked ones on this model

    def bind(self, model: nn.Module) -> None:
        """Tie the cache to `model`; a second model is refused (the states are the first one's)."""
        if self._model is None or self._model() is None:
            self._model = weakref.ref(model)
        elif self._model() is not model:
            raise SplitPluginError("this SweepCache holds another model's states; make one SweepCache per model "
                                   "(split_plugin.analysis.SweepCache())")

    def prefix(self, layer: int, batch: ScoringBatch, compute: Callable[[], Prefix]) -> Prefix:
        """The batch's cached inputs of `layer`, computed on first use."""
        key = (layer, _digest(batch.input_ids, batch.attention_mask, batch.position_ids))
        if key not in self.prefixes:
            self.prefixes[key] = compute()
        return self.prefixes[key]

    @staticmethod
    def _scores_key(batch: ScoringBatch) -> str:
        tokens = batch.tokens
        return _digest(batch.input_ids, batch.attention_mask, batch.position_ids, batch.rows, batch.positions,
                       tokens.targets, tokens.rows, tokens.counts)

    def unsteered_scores(self, batch: ScoringBatch) -> torch.Tensor | None:
        """The batch's log-prob sums at m = 0, if a sweep already scored it."""
        return self.unsteered.get(self._scores_key(batch))

    def keep_unsteered(self, batch: ScoringBatch, scores: torch.Tensor) -> None:
        self.unsteered[self._scores_key(batch)] = scores
