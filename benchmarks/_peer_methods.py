"""The peer libraries (steering-vectors, repeng, pyreft) as methods of the peers grid: each trained
its own way, turned into something our protocol can score, and one peer cell evaluated.

How each peer is trained and read is described in peers.py's docstring.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import time
from types import SimpleNamespace
from typing import Callable, Sequence

import numpy as np
import torch

from split_plugin import Intervention, sweep
from split_plugin.analysis.protocol import RELATIVE_GRID, Evaluation, evaluate, evaluate_with
from split_plugin.analysis.result import SweepResult
from split_plugin.data import encode_pairs, encode_texts, format_prompt
from split_plugin.layers import resolve_layout
from split_plugin.objectives import AnswerTokens, sequence_logprobs
from split_plugin.strength import edit_ratio, matched_multipliers


PEERS = ("steering-vectors", "repeng", "pyreft-NoReFT", "pyreft-LoReFT")
LIBRARY = {"steering-vectors": "steering-vectors", "repeng": "repeng", "pyreft-NoReFT": "pyreft",
           "pyreft-LoReFT": "pyreft"}
INSTALL = "pip install --no-deps -r requirements-peers.txt && pip install -r requirements-peers-deps.txt"
LAYER = 15
ORIENT_PAIRS = 16


def peer_versions() -> dict[str, str | None]:
    out = {}
    for name in ("steering-vectors", "repeng", "pyreft", "pyvene", "torch", "transformers", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def installed_peers() -> list[str]:
    """The peer methods whose library can be imported here."""
    found = []
    for method in PEERS:
        try:
            _import_peer(LIBRARY[method])
        except Exception:  # noqa: BLE001 - any import failure means "not usable here"
            continue
        found.append(method)
    return found


def _import_peer(library: str):
    if library == "repeng":
        if not hasattr(np, "float_"):
            np.float_ = np.float64  # repeng 0.4.0 annotates with numpy's removed alias
        import repeng
        return repeng
    if library == "steering-vectors":
        import steering_vectors
        return steering_vectors
    with contextlib.redirect_stdout(open(os.devnull, "w")):  # pyvene prints a notice about nnsight
        import pyreft
    return pyreft


# -- strings the vector peers read -------------------------------------------------------------------
def pair_strings(tokenizer, pairs) -> list[tuple[str, str]]:
    """(prompt + positive answer, prompt + negative answer): the chat prompt our encode_pairs uses."""
    return [(format_prompt(tokenizer, p.question) + p.positive.strip(),
             format_prompt(tokenizer, p.question) + p.negative.strip()) for p in pairs]


def vector_intervention(model, layer: int, vector: torch.Tensor, concept: str | None = None) -> Intervention:
    intervention = Intervention.for_model(model, "vector", layer, concept=concept)
    with torch.no_grad():
        intervention.vector.copy_(torch.as_tensor(vector, dtype=torch.float32).reshape(-1))
    return intervention


def train_steering_vectors(model, tokenizer, pairs, layer: int) -> Intervention:
    from steering_vectors import train_steering_vector
    from steering_vectors.aggregators import mean_aggregator

    sv = train_steering_vector(model, tokenizer, pair_strings(tokenizer, pairs), layers=[layer],
                               layer_type="decoder_block", read_token_index=-1,
                               aggregator=mean_aggregator(), batch_size=8, show_progress=False)
    return vector_intervention(model, layer, sv.layer_activations[layer].detach().float().cpu())


def train_repeng(model, tokenizer, pairs, layer: int) -> Intervention:
    repeng = _import_peer("repeng")
    dataset = [repeng.DatasetEntry(positive=a, negative=b) for a, b in pair_strings(tokenizer, pairs)]
    control = repeng.ControlVector.train(model, tokenizer, dataset, hidden_layers=[layer],
                                         method="pca_diff", batch_size=8)
    return vector_intervention(model, layer, torch.from_numpy(np.asarray(control.directions[layer])))


def orient(model, tokenizer, intervention: Intervention, train_pairs, text: str) -> bool:
    """Flip the vector if -v favours the positive answers more than +v on training pairs; True if flipped."""
    m = matched_multipliers(edit_ratio(model, tokenizer, intervention, text), [0.1])[0]
    result = sweep(model, tokenizer, intervention, list(train_pairs[:ORIENT_PAIRS]), [-m, m],
                   bootstrap=0, progress=False)
    pref = {r["multiplier"]: r["pref_mean"] for r in result.summary()}
    if pref[-m] > pref[m]:
        with torch.no_grad():
            intervention.vector.neg_()
        return True
    return False


# -- pyreft -------------------------------------------------------------------------------------------
def train_pyreft(model, tokenizer, pairs, layer: int, kind: str, seed: int, rank: int = 4, epochs: int = 2,
                 lr: float = 4e-3, batch_size: int = 4, max_length: int = 256):
    """(reft model, its intervention module, optimizer steps, collapsed?) trained on the positive answers."""
    pyreft = _import_peer("pyreft")
    torch.manual_seed(seed)
    dtype = next(model.parameters()).dtype
    hidden = resolve_layout(model).down_proj_dims(layer)[1]
    if kind == "NoReFT":
        module = pyreft.NoreftIntervention(embed_dim=hidden, low_rank_dimension=rank, add_bias=True, dtype=dtype)
    else:
        module = pyreft.LoreftIntervention(embed_dim=hidden, low_rank_dimension=rank, dtype=dtype)
    config = pyreft.ReftConfig(representations={"layer": layer, "component": "block_output",
                                                "low_rank_dimension": rank, "intervention": module})
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    reft = pyreft.get_reft_model(model, config, set_device=False)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    steps, collapsed = 0, False
    try:
        for _ in range(epochs):
            for start in range(0, len(order), batch_size):
                batch = encode_pairs(tokenizer, [pairs[i] for i in order[start:start + batch_size]],
                                     max_length=max_length)
                rows = slice(0, None, 2)  # the positive answer of each pair
                _, out = reft({"input_ids": batch.input_ids[rows], "attention_mask": batch.attention_mask[rows]},
                              unit_locations=None, labels=batch.labels[rows])
                optimizer.zero_grad()
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                steps += 1
                if kind == "LoReFT" and float(module.rotate_layer.weight.detach().norm()) == 0.0:
                    collapsed = True
                    break
            if collapsed:
                break
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
    module.eval()
    return reft, module, steps, collapsed


@contextlib.contextmanager
def scaled_edit(module: torch.nn.Module, multiplier: float):
    """While active, the intervention returns base + m * (its output - base)."""
    hook = module.register_forward_hook(lambda mod, args, out: args[0] + multiplier * (out - args[0]))
    try:
        yield
    finally:
        hook.remove()


@torch.no_grad()
def reft_edit_norms(model, tokenizer, module, layer: int, text: str, max_length: int = 128,
                    max_windows: int = 4) -> tuple[float, float]:
    """(median |delta at m=1| / median |h|, median |delta|) on held-out text: edit_ratio's measure."""
    ids, mask, _ = encode_texts(tokenizer, [text], max_length=max_length)
    ids, mask = ids[:max_windows], mask[:max_windows]
    seen = {}
    hook = resolve_layout(model).layer(layer).register_forward_hook(
        lambda mod, args, out: seen.__setitem__("h", out[0] if isinstance(out, tuple) else out))
    try:
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        hook.remove()
    h = seen["h"][mask.bool()]
    delta = (module(h) - h).float().norm(dim=-1)
    return float(delta.median() / h.float().norm(dim=-1).median()), float(delta.median())


# -- one evaluation path for any forward -------------------------------------------------------------
Forward = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def vector_forward(model, intervention: Intervention) -> Forward:
    def forward(ids, mask, m):
        with intervention.steer(model, m):
            return model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    return forward


def reft_forward(reft, module) -> Forward:
    def forward(ids, mask, m):
        with scaled_edit(module, m):
            return reft({"input_ids": ids, "attention_mask": mask}, unit_locations=None)[1].logits
    return forward


@torch.no_grad()
def score_forward(forward: Forward, tokenizer, pairs, multipliers: Sequence[float], text: str | None,
                  batch_size: int = 8, max_length: int = 256) -> SweepResult:
    """The metrics of `sweep` (accuracy, preference/utility log-odds, held-out perplexity) via `forward`.

    Same tokenization (encode_pairs / encode_texts), same scored tokens and the same aggregation
    (SweepResult.from_logprobs) as split_plugin.sweep's naive path; only the forward differs.
    """
    ms = [float(m) for m in multipliers]
    if 0.0 not in ms:
        ms = [0.0] + ms
    logp, counts = [[] for _ in ms], []
    for start in range(0, len(pairs), batch_size):
        batch = encode_pairs(tokenizer, pairs[start:start + batch_size], max_length=max_length)
        tokens = AnswerTokens.from_labels(batch.labels)
        counts.append(tokens.counts)
        for j, m in enumerate(ms):
            logits = forward(batch.input_ids, batch.attention_mask, m)
            logp[j].append(sequence_logprobs(logits[tokens.rows, tokens.positions], tokens).double())
    scores = torch.stack([torch.cat(x) for x in logp]).numpy()
    count = torch.cat(counts).numpy()
    ppl = None
    if text:
        ids, mask, labels = encode_texts(tokenizer, text, max_length=max_length)
        totals, n_tokens = np.zeros(len(ms)), 0
        for start in range(0, ids.shape[0], batch_size):
            part = slice(start, start + batch_size)
            tokens = AnswerTokens.from_labels(labels[part])
            n_tokens += int(tokens.counts.sum())
            for j, m in enumerate(ms):
                logits = forward(ids[part], mask[part], m)
                totals[j] += float(sequence_logprobs(logits[tokens.rows, tokens.positions], tokens).double().sum())
        ppl = [math.exp(-t / n_tokens) for t in totals]
    return SweepResult.from_logprobs(ms, scores[:, 0::2], scores[:, 1::2], count[0::2], count[1::2],
                                     perplexity=ppl, bootstrap=0)


# -- one peer cell -----------------------------------------------------------------------------------
def run_peer_cell(model, tokenizer, method: str, train_pairs, val_pairs, tests: dict, text: str, seed: int,
                  layer: int = LAYER, grid: Sequence[float] = RELATIVE_GRID, reft=None) -> Evaluation:
    """Train/extract one peer and evaluate it under the protocol at its own trained point m = 1."""
    reft = reft or SimpleNamespace(rank=4, epochs=2, lr=4e-3, batch_size=4)
    torch.manual_seed(seed)
    extra: dict = {}
    start = time.perf_counter()
    if method in ("steering-vectors", "repeng"):
        train = train_steering_vectors if method == "steering-vectors" else train_repeng
        intervention = train(model, tokenizer, train_pairs, layer)
        seconds = time.perf_counter() - start
        sequences = 2 * len(train_pairs)
        if method == "repeng":
            extra["flipped_by_orientation"] = orient(model, tokenizer, intervention, train_pairs, text)
        evaluation = evaluate(model, tokenizer, intervention, val_pairs, tests, text, name=method, trained=[1.0],
                              grid=grid, train_seconds=seconds)
        extra["vector_norm"] = float(intervention.vector.detach().norm())
    else:
        kind = method.split("-", 1)[1]
        reft_model, module, steps, collapsed = train_pyreft(
            model, tokenizer, train_pairs, layer, kind, seed, rank=reft.rank, epochs=reft.epochs, lr=reft.lr,
            batch_size=reft.batch_size)
        seconds = time.perf_counter() - start
        sequences = steps and min(steps * reft.batch_size, reft.epochs * len(train_pairs))
        ratio, median = reft_edit_norms(model, tokenizer, module, layer, text)
        collapsed = collapsed or not ratio > 0
        forward = reft_forward(reft_model, module)

        def score(pairs, multipliers, heldout):
            return score_forward(forward, tokenizer, pairs, multipliers, heldout)

        # a collapsed edit is zero at every m: evaluated unsteered only
        evaluation = evaluate_with(score, 0.0 if collapsed else ratio, [] if collapsed else [1.0], val_pairs,
                                   tests, text, name=method, grid=grid,
                                   params=sum(p.numel() for p in module.parameters()), train_seconds=seconds)
        extra.update(reft_edit_ratio=ratio, median_edit_norm=median, steps=steps, collapsed=collapsed,
                     rank=reft.rank, epochs=reft.epochs, lr=reft.lr, batch_size=reft.batch_size)
    evaluation.extra.update(method=method, seed=seed, train_pairs=len(train_pairs), validation_pairs=len(val_pairs),
                            test_pairs=len(tests.get("test", ())),
                            train_sequences=sequences, layer=layer, library=LIBRARY[method],
                            version=peer_versions().get(LIBRARY[method]), **extra)
    return evaluation
