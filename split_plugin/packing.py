"""Both answers of a pair in one row, so the shared prompt runs through the model once.

A pair's two rows (question + positive, question + negative) share every prompt token, and in a
causal model the prompt's states do not depend on what follows. A packed row is

    [prompt, positive answer, negative answer]

with position ids 0..P+A1-1 for the prompt and the positive answer and P..P+A2-1 for the
negative one, and a 4D attention mask that is causal except that negative-answer tokens do not
see positive-answer tokens. Every scored token then sees exactly what it sees in its own row,
so the log-probs equal the unpacked ones up to float rounding, at about half the compute for
short answers. The first packed batch of a sweep or a training run is checked against the
unpacked path.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from .objectives import AnswerTokens
from .scoring import ScoringBatch
from .tokenization import PairBatch


def pack_pairs(batch: PairBatch, dtype: torch.dtype, pad_id: int = 0,
               max_length: int | None = None) -> ScoringBatch | None:
    """Pack rows 2i / 2i+1 of `batch` (one prompt, two answers) into one row each.

    None where a packed row would be longer than `max_length`, or a pair's two rows do not
    start with the same prompt (a batch built by hand).
    """
    parts = []
    for i in range(batch.num_pairs):
        (pos, p), (neg, q) = (_row(batch, 2 * i), _row(batch, 2 * i + 1))
        if p != q or not torch.equal(pos[:p], neg[:p]):
            return None
        parts.append((pos[:p], pos[p:], neg[p:]))
    width = max(len(p) + len(a) + len(b) for p, a, b in parts)
    if max_length is not None and width > max_length:
        return None
    return _build(parts, width, dtype, pad_id, batch.input_ids.device)


def packed_lengths(batch: PairBatch) -> list[int]:
    """Tokens of each pair's packed row: its prompt once and both answers."""
    tokens = batch.attention_mask.sum(1)
    return (tokens[0::2] + tokens[1::2] - batch.prompt_lengths[0::2]).tolist()


def _row(batch: PairBatch, row: int) -> tuple[torch.Tensor, int]:
    """(the row's tokens without padding, its prompt length)."""
    return batch.input_ids[row][batch.attention_mask[row].bool()], int(batch.prompt_lengths[row])


def _build(parts: list, width: int, dtype: torch.dtype, pad_id: int, device) -> ScoringBatch:
    """Tensors of the packed batch from (prompt, positive, negative) id triples."""
    n = len(parts)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    allowed = torch.eye(width, dtype=torch.bool).repeat(n, 1, 1)  # padding sees itself: no NaN rows
    rows, positions, targets, counts = [], [], [], []
    for i, (prompt, pos, neg) in enumerate(parts):
        p, a, b = len(prompt), len(pos), len(neg)
        ids[i, :p + a + b] = torch.cat([prompt, pos, neg]).cpu()
        position_ids[i, :p + a + b] = torch.cat([torch.arange(p + a), p + torch.arange(b)])
        seen = torch.ones(p + a + b, p + a + b, dtype=torch.bool).tril()
        seen[p + a:, p:p + a] = False  # the negative answer never sees the positive one
        allowed[i, :p + a + b, :p + a + b] = seen
        # answer token j is predicted by the previous token of its own answer (the prompt's last for j = 0)
        for start, answer in ((p, pos), (p + a, neg)):
            before = [p - 1] + list(range(start, start + len(answer) - 1))
            rows += [i] * len(answer)
            positions += before
            targets += answer.tolist()
        counts += [a, b]
    virtual = torch.repeat_interleave(torch.arange(2 * n), torch.tensor(counts))
    mask = torch.zeros((n, 1, width, width), dtype=dtype)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    tokens = AnswerTokens(rows=virtual.to(device), positions=torch.tensor(positions, device=device),
                          targets=torch.tensor(targets, device=device),
                          counts=torch.tensor(counts, device=device))
    return ScoringBatch(ids.to(device), mask.to(device), position_ids.to(device),
                       torch.tensor(rows, device=device), tokens.positions, tokens)


def window_limit(model: nn.Module) -> int | None:
    """The longest packed row `model` can take: its sliding attention window, if it has one."""
    return getattr(model.config, "sliding_window", None)


def packing_agrees(packed: torch.Tensor, plain: torch.Tensor, dtype: torch.dtype, model_type: str) -> bool:
    """Whether packed rows gave the unpacked log-probs (else warn once and say what happens instead)."""
    diff = float((packed - plain).abs().max())
    tolerance = 1e-3 if dtype in (torch.float32, torch.float64) else 5e-2
    if diff > tolerance:
        warnings.warn(f"packing both answers of a pair into one row changes the log-probs of this "
                      f"{model_type} model by {diff:.2g}; scoring unpacked rows instead")
    return diff <= tolerance
