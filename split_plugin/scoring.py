"""The one scoring kernel: per-row answer log-prob sums, each row at its own multiplier.

The trainer, the sweep, the EasyEdit metrics and the benchmarks all score answers with
`answer_logprobs`. A `ScoringBatch` says where each scored token is predicted (batch row,
position) and which output row its log-prob adds to: plain batches score their own rows,
packed ones (packing.py) hold both answers of a pair in one row. With a cached
`Prefix` only layers L.. run (and, by default, the LM head only where a token is scored).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from .forward import Prefix, run_suffix
from .layers import ModelLayout
from . import shared_prefix
from .objectives import AnswerTokens, sequence_logprobs
from .shared_prefix import SharedKeys, common_length
from .steering import Multiplier


@dataclass
class ScoringBatch:
    """Model inputs and where each scored token is predicted: rows of the batch, summed per output row.

    Plain batches score their own rows; packed batches have B rows holding 2B output rows
    (2i positive, 2i+1 negative answer of pair i).
    """

    input_ids: torch.Tensor                # [B, T]
    attention_mask: torch.Tensor           # [B, T], or [B, 1, T, T] additive float (0 = attend)
    position_ids: torch.Tensor | None      # [B, T] when they are not 0..T-1
    rows: torch.Tensor                     # [n] batch row of each scored token
    positions: torch.Tensor                # [n] position whose logits predict it
    tokens: AnswerTokens                   # targets, output row of each token, counts per output row

    @classmethod
    def plain(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> "ScoringBatch":
        """Score each row's labelled tokens (labels = -100 elsewhere)."""
        tokens = AnswerTokens.from_labels(labels)
        return cls(input_ids, attention_mask, None, tokens.rows, tokens.positions, tokens)

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def output_rows(self) -> int:
        return self.tokens.counts.shape[0]

    @property
    def packed(self) -> bool:
        """Whether a row holds both answers of a pair (two output rows per batch row)."""
        return self.output_rows > self.batch_size

    def select(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, AnswerTokens]:
        """(rows, positions, tokens) of the scored tokens for batch rows `index` (repeats allowed).

        Selected row j takes the tokens of batch row index[j] and the output rows that row
        feeds (j for a plain batch; 2j, 2j+1 for a packed one), so results come back by index.
        """
        index = index.to(self.rows.device)
        per_row = torch.bincount(self.rows, minlength=self.batch_size)  # tokens are grouped by row
        lengths = per_row[index]
        starts = torch.repeat_interleave(per_row.cumsum(0)[index] - lengths, lengths)
        within = torch.arange(int(lengths.sum()), device=index.device) \
            - torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
        picked = starts + within
        new_rows = torch.repeat_interleave(torch.arange(index.numel(), device=index.device), lengths)
        per_out = self.output_rows // self.batch_size
        source = torch.repeat_interleave(index, lengths)
        out_rows = new_rows * per_out + (self.tokens.rows[picked] - source * per_out)
        counts = self.tokens.counts.view(self.batch_size, per_out)[index].reshape(-1)
        tokens = AnswerTokens(rows=out_rows, positions=self.positions[picked],
                              targets=self.tokens.targets[picked], counts=counts)
        return new_rows, tokens.positions, tokens


def answer_logprobs(model: nn.Module, batch: ScoringBatch, *, intervention: nn.Module | None = None,
                    multiplier: Multiplier = 0.0, index: torch.Tensor | None = None,
                    layout: ModelLayout | None = None, prefix: Prefix | None = None,
                    answer_only_head: bool = True, share_prefix: bool = False) -> torch.Tensor:
    """Answer log-prob sums per output row, of batch rows `index` (all rows when None).

    `intervention` steers at `multiplier` (a float, or one value per selected row); without
    one the model is scored as it is (hooks included). With `prefix` (the cached inputs of
    the intervention's layer, `layout` required) only the layers from there up run, and with
    `share_prefix` the leading tokens all rows share run once per distinct multiplier.
    """
    if index is None:
        rows, positions, tokens = batch.rows, batch.positions, batch.tokens
    else:
        rows, positions, tokens = batch.select(index)
    steering = intervention.steer(model, multiplier, layout=layout) if intervention is not None \
        else contextlib.nullcontext()
    with steering as handle:
        if prefix is not None:
            if answer_only_head:
                shared = _shared_prefix(layout, prefix, batch, positions, index, handle) if share_prefix else None
                logits = run_suffix(layout, prefix, index, rows=rows, positions=positions, shared=shared)
            else:
                logits = run_suffix(layout, prefix, index)[rows, positions]
        else:
            logits = _full_logits(model, batch, index)[rows, positions]
    return sequence_logprobs(logits, tokens)


def _shared_prefix(layout: ModelLayout, prefix: Prefix, batch: ScoringBatch, positions: torch.Tensor,
                   index: torch.Tensor | None, handle) -> tuple[int, SharedKeys] | None:
    """The batch's common leading tokens run once per distinct multiplier; None where that saves nothing."""
    length = common_length(batch.input_ids, int(positions.min()))
    if not length or not shared_prefix.supported(prefix):
        return None
    n = batch.batch_size if index is None else index.numel()
    per_row = handle is not None and torch.is_tensor(handle.multiplier)
    values, inverse = torch.unique(handle.multiplier, return_inverse=True) if per_row \
        else (None, torch.zeros(n, dtype=torch.long))
    copies = 1 if values is None else values.numel()
    if 2 * copies > n:
        return None
    original = handle.multiplier if per_row else None
    try:
        if per_row:
            handle.multiplier = values
        keys = shared_prefix.record(layout, prefix, length, copies)
    finally:
        if per_row:
            handle.multiplier = original
    return length, keys.reading(inverse.to(prefix.hidden.device))


def pair_logprobs(model: nn.Module, tokenizer, pairs, prompt_format: str,
                  max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probabilities of each pair's positive and of its negative answer, model as it is."""
    from .tokenization import PairBatch, encode_pairs  # data-side module; scoring stays importable alone

    batch = encode_pairs(tokenizer, pairs, max_length=max_length, padding_side="right", prompt_format=prompt_format)
    batch = batch.to(next(model.parameters()).device)
    lp = answer_logprobs(model, ScoringBatch.plain(batch.input_ids, batch.attention_mask, batch.labels))
    return PairBatch.split_pairs(lp)


def _full_logits(model: nn.Module, batch: ScoringBatch, index: torch.Tensor | None) -> torch.Tensor:
    """[rows, T, vocab] logits of a plain full forward over the (selected) batch rows."""
    pick = (lambda t: t) if index is None else (lambda t: t[index.to(t.device)])
    extra = {"position_ids": pick(batch.position_ids)} if batch.position_ids is not None else {}
    out = model(input_ids=pick(batch.input_ids), attention_mask=pick(batch.attention_mask),
                use_cache=False, **extra)
    return out.logits if hasattr(out, "logits") else out
