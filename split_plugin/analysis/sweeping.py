"""Multiplier sweeps: preference / utility log-odds, accuracy and held-out perplexity per m.

For each batch the layers below the intervention's layer run once (`capture_prefix`); the
layers from L upward then run once per group of k multipliers, with the batch stacked k
times and the intervention applied with a per-row multiplier (copy j of the batch gets
multiplier j), and the LM head runs only where a scored token is predicted. Both answers of
a pair share one packed row, so their common prompt runs once (see packing.py), and pairs are
batched in order of length, so batches carry little padding. `naive=True` runs the plain full
forward per multiplier instead (same numbers up to float rounding).
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import HELDOUT_WORDS, ContrastivePair, PairBatch, encode_pairs, encode_texts, load_heldout_text
from ..errors import PerRowMultiplierError, SplitPluginError
from ..forward import Prefix, capture_prefix, stacked_index
from ..intervention import Intervention
from ..layers import ArchSpec, ModelLayout, resolve_layout
from ..safety import frozen
from ..scoring import ScoringBatch, answer_logprobs
from ..version import __version__
from ..packing import pack_pairs, packed_lengths, packing_agrees, window_limit
from .result import SweepResult
from .reuse import SweepCache
from .stats import check_multipliers

LOGITS_BUDGET = 2 ** 26  # most logits (elements) one stacked pass may hold: 256 MiB in fp32


def _check_inputs(intervention: Intervention, pairs: Sequence[ContrastivePair], batch_size: int,
                  max_length: int, bootstrap: int) -> list[ContrastivePair]:
    """Validate the arguments of `sweep`, naming the fix."""
    if not isinstance(intervention, Intervention):
        raise SplitPluginError(f"intervention must be an Intervention, got {type(intervention).__name__}; "
                               "load one with Intervention.from_pretrained(dir) or import_peft(dir, model)")
    pairs = list(pairs or [])
    if not pairs:
        raise SplitPluginError("no pairs to sweep over; pass at least one ContrastivePair "
                               "(e.g. load_pairs('power-seeking', split='test'))")
    bad = [type(p).__name__ for p in pairs if not isinstance(p, ContrastivePair)]
    if bad:
        raise SplitPluginError(f"pairs must be ContrastivePair objects, got {bad[0]}; load them with load_pairs")
    for name, value, low in (("batch_size", batch_size, 1), ("max_length", max_length, 2),
                             ("bootstrap", bootstrap, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise SplitPluginError(f"{name} must be an integer >= {low}, got {value!r}")
    return pairs


def _heldout(heldout_text: str | bool | None) -> str | None:
    """True -> the first HELDOUT_WORDS words of the bundled prose; a string is used as is; None/False skip."""
    if heldout_text is True:
        return load_heldout_text(words=HELDOUT_WORDS)
    if heldout_text is None or heldout_text is False:
        return None
    if not isinstance(heldout_text, str) or not heldout_text.strip():
        raise SplitPluginError("heldout_text must be True, None or a non-empty string")
    return heldout_text


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the intervention while sweeping; its own mode restored after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class _Scorer:
    """Log-prob sums of scored tokens at every multiplier: cached prefix, stacked, packed; or naive."""

    def __init__(self, layout: ModelLayout, intervention: Intervention, multipliers: list[float],
                 naive: bool, max_rows: int, pack: bool = True, cache: SweepCache | None = None):
        self.layout, self.intervention, self.multipliers = layout, intervention, multipliers
        self.naive, self.max_rows, self.cache = naive, max_rows, cache
        self.stackable = True
        # None: not yet checked on this model (a cache remembers another sweep's check)
        self.pack: bool | None = (cache.packing if cache is not None else None) if pack else False
        parameter = next(layout.model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        config = layout.model.config
        self.vocab = getattr(layout.lm_head, "out_features", None) or config.vocab_size
        self.pack_limit = window_limit(layout.model)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                 pairs: PairBatch | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """([M, rows] log-prob sums, [rows] scored-token counts); `pairs`: the rows are this PairBatch's."""
        plain = ScoringBatch.plain(input_ids.to(self.device), attention_mask.to(self.device),
                                   labels.to(self.device))
        if self.naive:
            return self._naive(plain), plain.tokens.counts
        if pairs is not None and self.pack is not False:
            packed = pack_pairs(pairs.to(self.device), self.dtype, max_length=self.pack_limit)
            if packed is not None:
                scores = self._stacked(packed)
                if self.pack is None:
                    self.pack = self._packing_agrees(scores, plain)
                    if self.cache is not None:
                        self.cache.packing = self.pack
                if self.pack:
                    return scores, plain.tokens.counts
        return self._stacked(plain), plain.tokens.counts

    def _packing_agrees(self, packed_scores: torch.Tensor, plain: ScoringBatch) -> bool:
        """Check once per sweep that packed rows give the unpacked log-probs at m = 0."""
        reference = self._stacked(plain, [0.0])[0]
        return packing_agrees(packed_scores[self.multipliers.index(0.0)], reference, self.dtype,
                              self.layout.model_type)

    def _naive(self, batch: ScoringBatch) -> torch.Tensor:
        """The plain thing: a full forward with full logits per multiplier."""
        return torch.stack([answer_logprobs(self.layout.model, batch, intervention=self.intervention,
                                            multiplier=m, layout=self.layout) for m in self.multipliers])

    def group_size(self, rows: int, n_tokens: int, count: int) -> int:
        """How many of `count` multipliers share one pass: at most `max_rows` rows and LOGITS_BUDGET logits."""
        by_rows = self.max_rows // rows
        by_logits = LOGITS_BUDGET // max(1, n_tokens * self.vocab)
        return max(1, min(by_rows, by_logits, count))

    def _prefix(self, batch: ScoringBatch) -> Prefix:
        """Run the layers below the intervention once (with the batch's own position ids)."""
        def run() -> Prefix:
            return capture_prefix(self.layout, self.intervention.layer, batch.input_ids, batch.attention_mask,
                                  batch.position_ids)
        return run() if self.cache is None else self.cache.prefix(self.intervention.layer, batch, run)

    def _stacked(self, batch: ScoringBatch, multipliers: list[float] | None = None) -> torch.Tensor:
        """[M, output rows] log-prob sums; m = 0 comes from the cache when another sweep scored this batch."""
        multipliers = self.multipliers if multipliers is None else multipliers
        known = self.cache.unsteered_scores(batch) if self.cache is not None and 0.0 in multipliers else None
        todo = [m for m in multipliers if known is None or m != 0.0]
        scores = dict(zip(todo, self._groups(batch, todo))) if todo else {}
        if known is None and 0.0 in scores and self.cache is not None:
            self.cache.keep_unsteered(batch, scores[0.0])
        return torch.stack([known if known is not None and m == 0.0 else scores[m] for m in multipliers])

    def _groups(self, batch: ScoringBatch, multipliers: list[float]) -> torch.Tensor:
        """Prefix once, then layers L.. for k multipliers at a time on the batch stacked k times."""
        prefix = self._prefix(batch)
        k = self.group_size(batch.batch_size, batch.rows.numel(), len(multipliers)) if self.stackable else 1
        out = []
        for start in range(0, len(multipliers), k):
            group = multipliers[start:start + k]
            try:
                out.append(self._suffix(prefix, batch, group))
            except PerRowMultiplierError:
                if len(group) == 1:
                    raise
                # the down projection sees flattened [rows * T, d] inputs (OPT): no per-row m
                self.stackable = False
                out.extend(self._suffix(prefix, batch, [m]) for m in group)
        return torch.cat(out)

    def _suffix(self, prefix: Prefix, batch: ScoringBatch, group: list[float]) -> torch.Tensor:
        """[k, output rows] log-prob sums with the batch stacked once per multiplier in `group`."""
        k = len(group)
        multiplier = torch.tensor(group, dtype=torch.float32, device=self.device).repeat_interleave(
            batch.batch_size) if k > 1 else group[0]
        index = stacked_index(batch.batch_size, k) if k > 1 else None
        # packed rows share their opening tokens (system turn, user header): run those once per m;
        # the first packed batch is checked against unpacked rows, which run in full
        scores = answer_logprobs(self.layout.model, batch, intervention=self.intervention,
                                 multiplier=multiplier, index=index, layout=self.layout, prefix=prefix,
                                 share_prefix=batch.packed)
        return scores.view(k, batch.output_rows)


def _by_length(tokenizer, pairs: list[ContrastivePair], max_length: int, system_prompt: str | None) -> list[int]:
    """Pair indices ordered by packed length (prompt + both answers; stable on ties).

    Batching pairs of like length cuts the padding a batch carries (6-7% of the token slots of
    the bundled concepts' pairs in input order, about 1% sorted); the scores do not depend on it.
    """
    lengths = packed_lengths(encode_pairs(tokenizer, pairs, max_length=max_length, system_prompt=system_prompt))
    return sorted(range(len(pairs)), key=lengths.__getitem__)


def _score_pairs(scorer: _Scorer, tokenizer, pairs: list[ContrastivePair], batch_size: int,
                 max_length: int, system_prompt: str | None, progress: bool):
    """[M, 2N] log-prob sums and [2N] token counts (row 2i positive, 2i+1 negative), in input order;
    the batches are cut from the pairs sorted by length."""
    order = _by_length(tokenizer, pairs, max_length, system_prompt)
    scores, counts = [], []
    starts = range(0, len(pairs), batch_size)
    for start in tqdm(starts, desc="sweep pairs", disable=not progress, leave=False):
        batch = encode_pairs(tokenizer, [pairs[i] for i in order[start:start + batch_size]],
                             max_length=max_length, system_prompt=system_prompt)
        s, c = scorer(batch.input_ids, batch.attention_mask, batch.labels, pairs=batch)
        scores.append(s.double().cpu())
        counts.append(c.cpu())
    rows = torch.tensor([[2 * i, 2 * i + 1] for i in order]).flatten()  # where each scored row belongs
    logp, count = torch.cat(scores, dim=1), torch.cat(counts)
    out_logp, out_count = torch.empty_like(logp), torch.empty_like(count)
    out_logp[:, rows], out_count[rows] = logp, count
    return out_logp, out_count


def _perplexity(scorer: _Scorer, tokenizer, text: str, batch_size: int, max_length: int,
                progress: bool) -> tuple[list[float], int]:
    """Per-multiplier perplexity (exp of the token-mean NLL over all windows) and the token count."""
    ids, mask, labels = encode_texts(tokenizer, text, max_length=max_length)
    rows = max(1, min(batch_size, LOGITS_BUDGET // (ids.shape[1] * scorer.vocab)))
    total, n_tokens = torch.zeros(len(scorer.multipliers), dtype=torch.float64), 0
    for start in tqdm(range(0, ids.shape[0], rows), desc="sweep held-out", disable=not progress,
                      leave=False):
        part = slice(start, start + rows)
        s, c = scorer(ids[part], mask[part], labels[part])
        total += s.double().sum(1).cpu()
        n_tokens += int(c.sum())
    return [math.exp(-t / n_tokens) for t in total.tolist()], n_tokens


def _metadata(model: nn.Module, intervention: Intervention, scorer: _Scorer, n_heldout: int,
              seconds: float) -> dict:
    """What was swept: the intervention, the model and how."""
    config = intervention.config
    return {"form": config.form, "layer": config.layer, "concept": config.concept,
            "model_type": scorer.layout.model_type, "num_layers": scorer.layout.num_layers,
            "model_name": getattr(getattr(model, "config", None), "_name_or_path", None),
            "naive": scorer.naive, "packed_pairs": bool(scorer.pack) and not scorer.naive,
            "heldout_tokens": n_heldout, "seconds": round(seconds, 3),
            "version": __version__}


def sweep(model: nn.Module, tokenizer, intervention: Intervention, pairs: Sequence[ContrastivePair],
          multipliers: Sequence[float], *, batch_size: int = 8, max_length: int = 256,
          heldout_text: str | bool | None = None, system_prompt: str | None = None,
          bootstrap: int = 1000, seed: int = 0, progress: bool = True, naive: bool = False,
          max_rows: int = 64, pack: bool = True, layout: ArchSpec | dict | None = None,
          cache: SweepCache | None = None) -> SweepResult:
    """Score every pair at every multiplier (0 always included) and summarise.

    Per multiplier: answer log-prob sums, PrefOdds, UtilOdds (NaN = undefined, counted),
    accuracy, means/medians with bootstrap 95% CIs over pairs and, with `heldout_text`
    (True = the first HELDOUT_WORDS words of the bundled prose; or your own text), held-out
    perplexity and its increase relative to m = 0.
    `max_rows` caps the rows of one stacked pass (batch rows x multipliers); `pack` scores both
    answers of a pair in one row (the shared prompt runs once; checked against unpacked rows on
    the first batch). `cache` (a SweepCache shared by sweeps of the same model, pairs and text)
    reuses what another sweep computed for a batch: layers below L, the m = 0 scores, the packing
    check. The model is left as it was: no hooks, same train/eval mode and requires_grad flags,
    even on errors.
    """
    ms = check_multipliers(multipliers)
    pairs = _check_inputs(intervention, pairs, batch_size, max_length, bootstrap)
    text = _heldout(heldout_text)
    resolved = resolve_layout(model, layout)
    if cache is not None:
        cache.bind(model)
    scorer = _Scorer(resolved, intervention, ms, naive, max_rows, pack, cache)
    started = time.perf_counter()
    with frozen(model), _eval_mode(intervention), torch.no_grad():
        logp, counts = _score_pairs(scorer, tokenizer, pairs, batch_size, max_length,
                                    system_prompt, progress)
        ppl, n_heldout = _perplexity(scorer, tokenizer, text, batch_size, max_length, progress) \
            if text else (None, 0)
    meta = _metadata(model, intervention, scorer, n_heldout, time.perf_counter() - started)
    (logp_pos, logp_neg), (count_pos, count_neg) = PairBatch.split_pairs(logp, dim=1), PairBatch.split_pairs(counts)
    return SweepResult.from_logprobs(ms, logp_pos.numpy(), logp_neg.numpy(),
                                     count_pos.numpy(), count_neg.numpy(), perplexity=ppl,
                                     metadata=meta, bootstrap=bootstrap, seed=seed)


def raw_logprobs(result: SweepResult) -> np.ndarray:
    """[M, N, 2] answer log-prob sums (positive, negative) of a sweep, e.g. to compare two runs."""
    return np.stack([result.per_pair("logp_pos"), result.per_pair("logp_neg")], axis=-1)
