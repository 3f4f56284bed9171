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
from .caa import mean_differences
from .checkpoints import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import ContrastivePair, PairBatch, encode_pairs, encode_texts, load_heldout_text, read_text
from .errors import SplitPluginError
from .forward import Prefix, PrefixStore, capture_prefix, run_suffix
from .intervention import Intervention
from .layers import LayoutLike, ModelLayout, resolve_layout
from .objectives import nll, off_subspace_share, reps_loss, split_loss
from .safety import check_device, frozen
from .scoring import ScoringBatch, answer_logprobs



def as_train_config(config: TrainConfig | Mapping | str | os.PathLike) -> TrainConfig:
    """Accept a TrainConfig, a mapping of settings or a YAML path."""
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, Mapping):
        return TrainConfig.from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        return TrainConfig.from_yaml(config)
    raise SplitPluginError(f"config must be a TrainConfig, a mapping of settings or a YAML path, "
                           f"got {type(config).__name__}")


def check_pairs(pairs: Sequence[ContrastivePair]) -> list[ContrastivePair]:
    """The pairs as a list; an empty set or anything but ContrastivePair objects is refused."""
    if pairs is None or isinstance(pairs, (str, bytes, Mapping)) or not hasattr(pairs, "__iter__"):
        raise SplitPluginError(f"training data must be a list of ContrastivePair objects, got "
                               f"{type(pairs).__name__}; load files with split_plugin.load_pairs")
    pairs = list(pairs)
    if not pairs:
        raise SplitPluginError("the training set is empty; pass at least one ContrastivePair")
    bad = [type(p).__name__ for p in pairs if not isinstance(p, ContrastivePair)]
    if bad:
        raise SplitPluginError(f"training data must be ContrastivePair objects, got {bad[0]}; "
                               "load files with split_plugin.load_pairs")
    return pairs


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


# -- CAA ---------------------------------------------------------------------------------------
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


# -- trained methods -----------------------------------------------------------------------------
def _encode(tokenizer, pairs: Sequence[ContrastivePair], config: TrainConfig, model: nn.Module) -> PairBatch:
    device = next(model.parameters()).device
    return encode_pairs(tokenizer, list(pairs), max_length=config.max_length,
                        system_prompt=config.system_prompt, prompt_format=config.prompt_format).to(device)


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
            dropout=config.dropout, concept=pairs[0].concept).to(next(model.parameters()).device)
        order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(config.seed))
        shuffled = [pairs[i] for i in order.tolist()]
        self.batches = [shuffled[i:i + config.batch_size] for i in range(0, len(pairs), config.batch_size)]
        self.blocks = self._blocks()
        self.steps_per_epoch = math.ceil(len(self.batches) / config.grad_accum)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.encoded: dict[int, PairBatch] = {}
        self.scoring: dict[int, ScoringBatch] = {}
        self.references: dict[int, torch.Tensor] = {}
        self.store = PrefixStore(config.cache_limit_mb * 2**20)
        self.kl_windows: list[tuple[Prefix, torch.Tensor, torch.Tensor]] = []
        self.basis: torch.Tensor | None = None

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
            enc = self.batch(key)
            self.store.put(key, capture_prefix(self.layout, self.config.layer, enc.input_ids,
                                               enc.attention_mask))
        return self.store.get(key)

    def reference_logprobs(self, key: int) -> torch.Tensor:
        """Unsteered answer log-probs of every sequence in a batch (RePS), computed once."""
        if key not in self.references:
            with torch.no_grad():
                index = torch.arange(self.batch(key).input_ids.shape[0])
                self.references[key] = self._logprobs(key, index, torch.zeros(len(index)))
        return self.references[key]

    # -- scoring -------------------------------------------------------------------------
    def _logprobs(self, key: int, index: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
        """Answer log-prob sums of sequences `index` of a batch, each at its own multiplier."""
        if key not in self.scoring:
            enc = self.batch(key)
            self.scoring[key] = ScoringBatch.plain(enc.input_ids, enc.attention_mask, enc.labels)
        device = self.scoring[key].input_ids.device
        prefix = self.prefix(key) if self.config.prefix_cache else None
        with self._autocast():
            return answer_logprobs(self.model, self.scoring[key], intervention=self.intervention,
                                   multiplier=multipliers.to(device), index=index.to(device),
                                   layout=self.layout, prefix=prefix,
                                   answer_only_head=self.config.answer_only_head)

    def _autocast(self):
        device = next(self.model.parameters()).device
        if self.config.autocast and device.type == "cuda":
            dtype = torch.bfloat16 if self.config.autocast == "bf16" else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return torch.autocast("cpu", enabled=False)

    def step_loss(self, key: int, generator: torch.Generator) -> tuple[torch.Tensor, float]:
        """The loss of one batch and its mean preference margin (L_neg - L_pos, add rows)."""
        c, enc = self.config, self.batch(key)
        n = enc.input_ids.shape[0] // 2
        factors = torch.tensor(c.factors)
        size = len(self.batches[key])  # all processes draw for the global batch, then take their slice
        strength = factors[torch.randint(len(factors), (size,), generator=generator)][self.dp.shard(size)]
        pair_rows = torch.arange(n)
        plan = [(b, PairBatch.pair_rows(pair_rows, b.negative), strength * (-1.0 if b.sub else 1.0))
                for b in self.blocks]
        if c.joint_forward:
            joint = self._logprobs(key, torch.cat([p[1] for p in plan]), torch.cat([p[2] for p in plan]))
            scores = dict(zip([(b.sub, b.negative) for b in self.blocks], joint.split(n)))
        else:
            scores = {(b.sub, b.negative): self._logprobs(key, idx, mult) for b, idx, mult in plan}
        counts = (enc.labels[:, 1:] != -100).sum(1)
        return self._combine(key, scores, counts, n)

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

    # -- the KL option -------------------------------------------------------------------------
    def kl_loss(self, step: int, strength: float) -> torch.Tensor:
        """KL(unsteered || steered) next-token distributions on generic text at +s and -s."""
        if not self.kl_windows:
            self._prepare_kl()
        prefix, mask, ref_logp = self.kl_windows[step % len(self.kl_windows)]
        multipliers = torch.tensor([strength, -strength], device=mask.device)
        index = torch.zeros(2, dtype=torch.long)
        with self._autocast(), self.intervention.steer(self.model, multipliers, layout=self.layout):
            logits = run_suffix(self.layout, prefix, index)
        logp = torch.log_softmax(logits.float(), -1)
        kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
        return (kl * mask).sum() / mask.sum().clamp(min=1)

    @torch.no_grad()
    def _prepare_kl(self) -> None:
        text = self.config.kl_text
        text = load_heldout_text("fit") if text in (None, "heldout") else read_text(text)
        ids, mask, _ = encode_texts(self.tokenizer, [text], max_length=min(self.config.max_length, 128))
        device = next(self.model.parameters()).device
        for row in range(min(4, ids.shape[0])):
            prefix = capture_prefix(self.layout, self.config.layer, ids[row:row + 1].to(device),
                                    mask[row:row + 1].to(device))
            ref = torch.log_softmax(run_suffix(self.layout, prefix).float(), -1)
            self.kl_windows.append((prefix, mask[row:row + 1].to(device).float(), ref))

    # -- the manifold option ------------------------------------------------------------------
    def manifold_loss(self) -> torch.Tensor:
        """Share of the edit pointing off the unsteered states' principal subspace at layer L."""
        if self.basis is None:
            self.basis = self._principal_basis()
        iv = self.intervention
        return off_subspace_share(iv.delta_weight_matrix(), iv.delta_bias_vector(), self.basis)

    def _principal_basis(self) -> torch.Tensor:
        from .analysis.manifold import principal_basis  # scipy: loaded only when the option is on

        text = self.config.kl_text
        text = load_heldout_text("fit") if text in (None, "heldout") else read_text(text)
        return principal_basis(self.layout, self.tokenizer, text, self.config.layer, self.config.manifold_rank,
                               max_length=min(self.config.max_length, 128))

    # -- the loop ------------------------------------------------------------------------------
    def run(self, resume, history: list | None) -> Intervention:
        c = self.config
        params = list(self.intervention.parameters())
        optimizer = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        total = self.total_steps
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
        self.intervention.train()
        bar = tqdm(total=total, initial=start, desc=f"{c.method}/{c.form} L{c.layer}",
                   disable=not c.progress or not self.dp.is_main, dynamic_ncols=True)
        saves = c.checkpoint_dir if self.dp.is_main else None  # only rank 0 writes files
        last_finite, margins = None, []
        step = start
        try:
            while step < total:
                epoch, within = divmod(step, self.steps_per_epoch)
                order = torch.randperm(len(self.batches),
                                       generator=torch.Generator().manual_seed(c.seed + 7919 * (epoch + 1)))
                keys = order[within * c.grad_accum:(within + 1) * c.grad_accum].tolist()
                gen = torch.Generator().manual_seed(c.seed * 1_000_003 + step)
                torch.manual_seed(c.seed * 31 + step)  # dropout, inside fork_rng
                optimizer.zero_grad(set_to_none=True)
                loss_value, margin = 0.0, []
                for key in keys:
                    share = self.share(key)  # weights this process's part of the global batch
                    loss, m = self.step_loss(key, gen) if share else self.same_draws(key, gen)
                    if c.kl_weight > 0:
                        s = float(c.factors[int(torch.randint(len(c.factors), (1,), generator=gen))])
                        loss = loss + c.kl_weight * self.kl_loss(step, s)
                    if c.manifold_weight > 0:
                        loss = loss + c.manifold_weight * self.manifold_loss()
                    if share:
                        (loss * share / len(keys)).backward()
                    loss_value += loss.item() * share / len(keys)
                    margin.append(m * share)
                loss_value, *margin = self.dp.sync(params, [loss_value, *margin])  # sums over processes
                grad_norm = torch.nn.utils.clip_grad_norm_(params, c.max_grad_norm)
                if not math.isfinite(loss_value) or not torch.isfinite(grad_norm):
                    what = "loss" if not math.isfinite(loss_value) else "gradient norm"
                    raise SplitPluginError(
                        f"training stopped: the {what} became non-finite at step {step + 1} (last "
                        f"finite loss {last_finite}); lower lr ({c.lr}) or the factors ({max(c.factors)})"
                        + (f"; the last good checkpoint is in {c.checkpoint_dir}" if c.checkpoint_dir else ""))
                optimizer.step()
                scheduler.step()
                step += 1
                last_finite = loss_value
                margins.append(sum(margin) / len(margin))
                record = {"step": step, "epoch": epoch + 1, "loss": loss_value,
                          "margin": margins[-1], "lr": scheduler.get_last_lr()[0]}
                log.append(record)
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
