"""Train one intervention on polarity pairs: SPLIT, SFT, RePS, or CAA (no training).

Each step draws a strength s per pair from `config.factors` and builds "add" rows (+s, the
matching answer is positive) and, with `sub_rows`, "sub" rows (-s, roles swapped). Both
answers of a pair are scored at the same |s| in one batched forward. The model is frozen
and the intervention sits at layer L, so the hidden states entering layer L are computed
once per batch and cached; each step runs only layers L..N-1 and the LM head at answer
positions.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .caa import mean_difference_vector
from .checkpoints import load_checkpoint, save_checkpoint
from .config import TrainConfig, as_train_config
from .data import ContrastivePair, PairBatch, encode_pairs
from .pairs import check_pairs
from .precision import master_dtype
from .errors import SplitPluginError
from .forward import Prefix, PrefixStore, capture_prefix, stacked_index
from .intervention import Intervention
from .layers import LayoutLike, ModelLayout, resolve_layout
from .objectives import nll, reps_loss, split_loss
from .packing import pack_pairs, packing_agrees, window_limit
from .regularizers import KLPenalty, ManifoldPenalty
from .safety import check_device, frozen
from .scoring import ScoringBatch, answer_logprobs



def train(model: nn.Module, tokenizer, pairs: Sequence[ContrastivePair],
          config: TrainConfig | Mapping | str, *, resume: str | os.PathLike | None = None,
          history: list | None = None, layout: LayoutLike = None) -> Intervention:
    """Train an intervention for `model` on `pairs`; the model is left exactly as it was.

    `layout` names the decoder layers of an architecture the registry does not know (an
    ArchSpec or a mapping of its fields), as `sweep(layout=...)` does.
    """
    config = as_train_config(config)
    pairs = check_pairs(pairs)
    layout = resolve_layout(model, layout)
    layout.check_layer(config.layer)
    check_device(config.device, model)
    _check_paths(config)
    with frozen(model):
        if config.method == "caa":
            intervention = mean_difference_vector(model, tokenizer, pairs, config, layout)
        else:
            with torch.random.fork_rng(devices=_cuda_devices(model)):
                torch.manual_seed(config.seed)  # the lora init depends on the seed, not the caller's RNG
                intervention = _Trainer(model, tokenizer, pairs, config, layout).run(resume, history)
            # the strengths training enforced the preference at: `split-steer generate` defaults inside them
            intervention.config.trained_range = [min(config.factors), max(config.factors)]
    # what the model card reports (saved with the intervention)
    intervention.card_data = {"method": config.method, "train_pairs": len(pairs)}
    return intervention


def _check_paths(config: TrainConfig) -> None:
    """Fail before training, not at the first checkpoint or KL step, on a bad folder or text file."""
    folder = config.checkpoint_dir
    if folder and Path(folder).exists() and not Path(folder).is_dir():
        raise SplitPluginError(f"checkpoint_dir {folder!r} is an existing file; give a folder path")
    text = config.kl_text
    if config.kl_weight > 0 and text not in (None, "heldout") and not Path(text).is_file():
        raise SplitPluginError(f"kl_text {text!r} is not a file; give a text file or 'heldout' "
                               "(the bundled held-out prose)")


def _cuda_devices(model: nn.Module) -> list[int]:
    device = next(model.parameters()).device
    return [device.index or 0] if device.type == "cuda" else []


# -- trained methods -----------------------------------------------------------------------------
def _encode(tokenizer, pairs: Sequence[ContrastivePair], config: TrainConfig, model: nn.Module) -> PairBatch:
    device = next(model.parameters()).device
    return encode_pairs(tokenizer, list(pairs), max_length=config.max_length,
                        system_prompt=config.system_prompt, prompt_format=config.prompt_format).to(device)


def _dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


@dataclass
class _Block:
    """P rows of one step: one answer of each pair, at +s (add rows) or -s (sub rows)."""

    sub: bool       # a sub row (multiplier -s, roles swapped)
    negative: bool  # scores the pair's negative answer


class _Trainer:
    def __init__(self, model, tokenizer, pairs, config: TrainConfig, layout: ModelLayout):
        self.model, self.tokenizer, self.config, self.layout = model, tokenizer, config, layout
        self.dp = distributed.setup(next(model.parameters()).device, config)  # rank 0 of 1 unless launched
        self.intervention = Intervention.for_model(
            model, config.form, config.layer, rank=config.rank, alpha=config.alpha,
            dropout=config.dropout, concept=pairs[0].concept,
        ).to(next(model.parameters()).device, master_dtype(_dtype(model)))
        order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(config.seed))
        shuffled = [pairs[i] for i in order.tolist()]
        self.batches = [shuffled[i:i + config.batch_size] for i in range(0, len(pairs), config.batch_size)]
        self.blocks = self._blocks()
        # both answers at each sign: one packed row per pair runs the shared prompt once (packing.py)
        self.packed = config.pack_pairs and {(b.sub, not b.negative) for b in self.blocks} <= \
            {(b.sub, b.negative) for b in self.blocks}
        self.steps_per_epoch = math.ceil(len(self.batches) / config.grad_accum)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.encoded: dict[int, PairBatch] = {}
        self.scoring: dict[int, ScoringBatch] = {}
        self.references: dict[int, torch.Tensor] = {}
        self.store = PrefixStore(config.cache_limit_mb * 2**20)
        self.kl = KLPenalty(layout, tokenizer, config)
        self.manifold = ManifoldPenalty(layout, tokenizer, config)
        self.last_finite: float | None = None  # the last finite loss, quoted when training stops

    def _blocks(self) -> list[_Block]:
        c = self.config
        needs_negative = c.method == "reps" or c.neg_weight > 0 or c.margin_weight > 0
        if c.method == "sft":
            needs_negative = False
        blocks = [_Block(sub=False, negative=False)]
        if needs_negative:
            blocks.append(_Block(sub=False, negative=True))
        if c.sub_rows:
            blocks.append(_Block(sub=True, negative=True))  # the positive of a sub row
            if needs_negative:
                blocks.append(_Block(sub=True, negative=False))
        return blocks

    # -- data and caches -----------------------------------------------------------------
    def batch(self, key: int) -> PairBatch:
        """This process's slice of global batch `key`, tokenized (the whole batch in one process)."""
        if key not in self.encoded:
            pairs = self.batches[key][self.dp.shard(len(self.batches[key]))]
            self.encoded[key] = _encode(self.tokenizer, pairs, self.config, self.model)
        return self.encoded[key]

    def scoring_batch(self, key: int) -> ScoringBatch:
        """Batch `key` as the model sees it: one packed row per pair, or one row per answer."""
        if key not in self.scoring:
            enc = self.batch(key)
            packed = pack_pairs(enc, _dtype(self.model), max_length=window_limit(self.model)) \
                if self.packed else None
            self.scoring[key] = packed or ScoringBatch.plain(enc.input_ids, enc.attention_mask, enc.labels)
        return self.scoring[key]

    def check_packing(self) -> None:
        """Score every pair unpacked from here on unless packing gives this model's log-probs."""
        keys = [key for key in range(len(self.batches)) if self.share(key)] if self.packed else []
        key = next((k for k in keys if self.scoring_batch(k).packed), None)
        if key is None:
            return
        enc = self.batch(key)  # the first pair is enough to catch a model that ignores the positions or the mask
        first = torch.tensor([0, 1], device=enc.input_ids.device)
        with torch.no_grad(), self._autocast():
            packed = answer_logprobs(self.model, self.scoring_batch(key), index=first[:1])
            plain = answer_logprobs(self.model, ScoringBatch.plain(enc.input_ids, enc.attention_mask, enc.labels),
                                    index=first)
        compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.autocast, _dtype(self.model))
        if not packing_agrees(packed, plain, compute, self.layout.model_type):
            self.packed = False
            self.scoring.clear()

    def share(self, key: int) -> float:
        """The fraction of global batch `key` this process scores (1 in one process, 0 for none)."""
        return self.dp.share(len(self.batches[key]))

    def same_draws(self, key: int, generator: torch.Generator) -> tuple[torch.Tensor, float]:
        """For a batch this process holds none of: the draws step_loss makes, a zero loss."""
        torch.randint(len(self.config.factors), (len(self.batches[key]),), generator=generator)
        return torch.zeros(()), 0.0

    def prefix(self, key: int) -> Prefix:
        if not self.config.prefix_cache:
            raise RuntimeError("prefix cache is off")
        if key not in self.store:
            batch = self.scoring_batch(key)
            self.store.put(key, capture_prefix(self.layout, self.config.layer, batch.input_ids,
                                               batch.attention_mask, batch.position_ids))
        return self.store.get(key)

    def reference_logprobs(self, key: int) -> torch.Tensor:
        """Unsteered answer log-probs of every answer in a batch (RePS), computed once."""
        if key not in self.references:
            with torch.no_grad():
                index = torch.arange(self.scoring_batch(key).batch_size)
                self.references[key] = self._logprobs(key, index, torch.zeros(len(index)))
        return self.references[key]

    # -- scoring -------------------------------------------------------------------------
    def _logprobs(self, key: int, index: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
        """Answer log-prob sums of the output rows of batch rows `index`, each row at its own multiplier."""
        batch = self.scoring_batch(key)
        device = batch.input_ids.device
        prefix = self.prefix(key) if self.config.prefix_cache else None
        with self._autocast():
            return answer_logprobs(self.model, batch, intervention=self.intervention,
                                   multiplier=multipliers.to(device), index=index.to(device),
                                   layout=self.layout, prefix=prefix,
                                   answer_only_head=self.config.answer_only_head)

    def _autocast(self):
        """bf16 / fp16 autocast on the model's device when `autocast` is set (fp32 master weights)."""
        if not self.config.autocast:
            return torch.autocast("cpu", enabled=False)
        dtype = torch.bfloat16 if self.config.autocast == "bf16" else torch.float16
        return torch.autocast(next(self.model.parameters()).device.type, dtype=dtype)

    def step_loss(self, key: int, generator: torch.Generator) -> tuple[torch.Tensor, float]:
        """The loss of one batch and its mean preference margin (L_neg - L_pos, add rows)."""
        c, enc = self.config, self.batch(key)
        n = enc.input_ids.shape[0] // 2
        factors = torch.tensor(c.factors)
        size = len(self.batches[key])  # all processes draw for the global batch, then take their slice
        strength = factors[torch.randint(len(factors), (size,), generator=generator)][self.dp.shard(size)]
        packed = self.scoring_batch(key).packed  # a batch too long for the attention window is not
        scores = self._packed_scores(key, strength, n) if packed else self._row_scores(key, strength, n)
        counts = (enc.labels[:, 1:] != -100).sum(1)
        return self._combine(key, scores, counts, n)

    def _row_scores(self, key: int, strength: torch.Tensor, n: int) -> dict:
        """{(sub, negative): [n] log-probs}, one batch row per scored answer."""
        plan = [(b, PairBatch.pair_rows(torch.arange(n), b.negative), strength * (-1.0 if b.sub else 1.0))
                for b in self.blocks]
        if not self.config.joint_forward:
            return {(b.sub, b.negative): self._logprobs(key, idx, mult) for b, idx, mult in plan}
        joint = self._logprobs(key, torch.cat([p[1] for p in plan]), torch.cat([p[2] for p in plan]))
        return dict(zip([(b.sub, b.negative) for b in self.blocks], joint.split(n)))

    def _packed_scores(self, key: int, strength: torch.Tensor, n: int) -> dict:
        """{(sub, negative): [n] log-probs}, one packed row per pair and sign (+s, and -s for sub rows)."""
        subs = sorted({b.sub for b in self.blocks})
        signed = [strength * (-1.0 if sub else 1.0) for sub in subs]
        if self.config.joint_forward:
            chunks = self._logprobs(key, stacked_index(n, len(subs)), torch.cat(signed)).split(2 * n)
        else:
            chunks = [self._logprobs(key, torch.arange(n), m) for m in signed]
        scores = {}
        for sub, chunk in zip(subs, chunks):
            scores[(sub, False)], scores[(sub, True)] = PairBatch.split_pairs(chunk)
        return scores

    def _combine(self, key: int, scores: dict, counts: torch.Tensor, n: int) -> tuple[torch.Tensor, float]:
        """Turn per-block log-probs into the method's loss (positive/negative roles per row kind)."""
        c = self.config
        counts_pos, counts_neg = PairBatch.split_pairs(counts)
        pos_lp, neg_lp, pos_n, neg_n, ref_pos, ref_neg = [], [], [], [], [], []
        ref = self.reference_logprobs(key) if c.method == "reps" else None
        for sub in ([False, True] if c.sub_rows else [False]):
            # in a sub row the pair's negative answer plays the positive role
            p_key, n_key = (sub, sub), (sub, not sub)
            pos_lp.append(scores[p_key])
            pos_n.append(counts_neg if sub else counts_pos)
            if n_key in scores:
                neg_lp.append(scores[n_key])
                neg_n.append(counts_pos if sub else counts_neg)
            if ref is not None:
                ref_p, ref_n = PairBatch.split_pairs(ref)
                ref_pos.append(ref_n if sub else ref_p)
                ref_neg.append(ref_p if sub else ref_n)
        lp_pos, cnt_pos = torch.cat(pos_lp), torch.cat(pos_n)
        loss_pos = nll(lp_pos, cnt_pos, c.loss_reduction)
        if not neg_lp:
            return c.pos_weight * loss_pos.mean(), float("nan")
        lp_neg, cnt_neg = torch.cat(neg_lp), torch.cat(neg_n)
        loss_neg = nll(lp_neg, cnt_neg, c.loss_reduction)
        margin = (loss_neg - loss_pos)[:n].mean().item()
        if c.method == "reps":
            loss = reps_loss(lp_pos, lp_neg, torch.cat(ref_pos), torch.cat(ref_neg), cnt_pos, cnt_neg,
                             beta=c.reps_beta, gamma=c.reps_gamma)
        else:
            loss = split_loss(loss_pos, loss_neg, c.pos_weight, c.neg_weight, c.margin_weight,
                              c.margin, pooled=c.pooled_hinge)
        return loss, margin

    # -- the loop ------------------------------------------------------------------------------
    def run(self, resume, history: list | None) -> Intervention:
        c = self.config
        params = list(self.intervention.parameters())
        optimizer, scheduler, step, log = self._start(resume, params)
        bar = tqdm(total=self.total_steps, initial=step, desc=f"{c.method}/{c.form} L{c.layer}",
                   disable=not c.progress or not self.dp.is_main, dynamic_ncols=True)
        saves = c.checkpoint_dir if self.dp.is_main else None  # only rank 0 writes files
        margins: list[float] = []
        try:
            while step < self.total_steps:
                optimizer.zero_grad(set_to_none=True)
                loss_value, margin = self._accumulate(step, params)
                optimizer.step()
                scheduler.step()
                step += 1
                margins.append(margin)
                log.append({"step": step, "epoch": (step - 1) // self.steps_per_epoch + 1, "loss": loss_value,
                            "margin": margin, "lr": scheduler.get_last_lr()[0]})
                recent = [x for x in margins[-20:] if math.isfinite(x)]
                bar.set_postfix(loss=f"{loss_value:.3f}",
                                margin=f"{sum(recent) / len(recent):.3f}" if recent else "n/a")
                bar.update(1)
                if saves and c.checkpoint_every and step % c.checkpoint_every == 0:
                    save_checkpoint(c.checkpoint_dir, self.intervention, optimizer, scheduler, c, step, log)
        except KeyboardInterrupt:
            if saves:
                save_checkpoint(c.checkpoint_dir, self.intervention, optimizer, scheduler, c, step, log)
                bar.write(f"interrupted: checkpoint at step {step} saved in {c.checkpoint_dir}; "
                          "pass resume= to continue")
            raise
        finally:
            bar.close()
            self.store.close()
            self.intervention.eval()
            if history is not None:
                history.extend(log)
        if saves:
            save_checkpoint(c.checkpoint_dir, self.intervention, optimizer, scheduler, c, step, log)
        for p in params:
            p.requires_grad_(False)
        return self.intervention

    def _start(self, resume, params: list[torch.Tensor]):
        """(optimizer, scheduler, first step, log so far), every batch tokenized and packing checked."""
        c, total = self.config, self.total_steps
        optimizer = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / total))
        start, log = 0, []
        if resume is not None:
            start, log = load_checkpoint(resume, self.intervention, optimizer, scheduler, c)
            if start > total:
                raise SplitPluginError(f"the checkpoint is at step {start}, past the {total} steps of "
                                       "this run; resume with the same data and config")
        for key in range(len(self.batches)):
            if self.share(key):
                self.batch(key)  # tokenize everything first: a bad pair fails before any step
        self.check_packing()
        self.intervention.train()
        self.last_finite = log[-1]["loss"] if log else None
        return optimizer, scheduler, start, log

    def _accumulate(self, step: int, params: list[torch.Tensor]) -> tuple[float, float]:
        """Backward over the step's batches (summed over processes); the loss and the mean margin."""
        c = self.config
        epoch, within = divmod(step, self.steps_per_epoch)
        order = torch.randperm(len(self.batches), generator=torch.Generator().manual_seed(c.seed + 7919 * (epoch + 1)))
        keys = order[within * c.grad_accum:(within + 1) * c.grad_accum].tolist()
        gen = torch.Generator().manual_seed(c.seed * 1_000_003 + step)
        torch.manual_seed(c.seed * 31 + step)  # dropout, inside fork_rng
        loss_value, margin = 0.0, []
        for key in keys:
            share = self.share(key)  # weights this process's part of the global batch
            loss, m = self.step_loss(key, gen) if share else self.same_draws(key, gen)
            if c.kl_weight > 0:
                s = float(c.factors[int(torch.randint(len(c.factors), (1,), generator=gen))])
                loss = loss + c.kl_weight * self.kl(self.intervention, step, s, self._autocast())
            if c.manifold_weight > 0:
                loss = loss + c.manifold_weight * self.manifold(self.intervention)
            if share:
                (loss * share / len(keys)).backward()
            loss_value += loss.item() * share / len(keys)
            margin.append(m * share)
        loss_value, *margin = self.dp.sync(params, [loss_value, *margin])  # sums over processes
        self._check_finite(step, loss_value, torch.nn.utils.clip_grad_norm_(params, c.max_grad_norm))
        return loss_value, sum(margin) / len(margin)

    def _check_finite(self, step: int, loss_value: float, grad_norm: torch.Tensor) -> None:
        """Stop with what to change when the loss or the gradient stops being finite."""
        c = self.config
        if math.isfinite(loss_value) and torch.isfinite(grad_norm):
            self.last_finite = loss_value
            return
        what = "loss" if not math.isfinite(loss_value) else "gradient norm"
        raise SplitPluginError(
            f"training stopped: the {what} became non-finite at step {step + 1} (last finite loss "
            f"{self.last_finite}); lower lr ({c.lr}) or the factors ({max(c.factors)})"
            + (f"; the last good checkpoint is in {c.checkpoint_dir}" if c.checkpoint_dir else ""))
