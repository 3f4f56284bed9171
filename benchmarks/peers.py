"""Side by side with the libraries users would pick instead: steering-vectors, repeng, pyreft.

    pip install --no-deps -r requirements-peers.txt      # the peers themselves, pinned
    pip install -r requirements-peers-deps.txt           # what they need that we do not already have
    python benchmarks/peers.py [--concepts power-seeking self-preservation optimism] [--seeds 0 1 2]
        [--train-pairs N] [--test-pairs N] [--methods steering-vectors repeng pyreft-NoReFT ...]
        [--out benchmarks/results/peers] [--markdown BENCHMARKS.md] [--cached-only]

The peers pin old numpy/transformers/torch, so they are installed with --no-deps next to our
torch / transformers; they are benchmark-only and never a dependency of split_plugin.

One cell = concept x method x seed, on the embedded SmolLM2-135M-Instruct at layer 15, trained
on the training split minus its last 40 pairs (the first --train-pairs of them):

- steering-vectors: `train_steering_vector` with the mean aggregator on "prompt + answer"
  strings, read at the last answer token (its `read_token_index`, one token per string is all
  the library allows); the layer-15 vector becomes our vector `Intervention`.
- repeng: `ControlVector.train(method="pca_diff")` on the same strings (numpy's removed
  `np.float_` is aliased first); PCA has no sign, so the vector is oriented with training
  pairs only: the sign whose +0.1-strength sweep on the first 16 training pairs gives the larger
  mean preference log-odds is kept. Then it becomes our vector `Intervention`.
- pyreft NoReFT / LoReFT, rank 4, at the layer's output on every position, trained with the
  library's own intervention modules and forward (a plain AdamW loop, the loss of
  `ReftTrainerForCausalLM` on the positive answers). Its edit depends on the input, so it is
  evaluated through pyreft/pyvene with a forward hook that scales the intervention's output
  delta by m; the metrics come from our own functions (`encode_pairs`, `sequence_logprobs`,
  `SweepResult.from_logprobs`) on the same pairs and text, a path that `tests/test_peers.py`
  checks against `split_plugin.sweep` for a plain vector. A LoReFT whose orthogonal weight is
  zero after training (torch >= 2.1's orthogonal parametrization under AdamW) is reported as
  collapsed and evaluated unsteered only. pyvene clears every forward hook of the model it wraps
  (transformers 5 returns hidden states through such hooks), so each cell gets a freshly loaded model.
- ours (CAA, SFT, SPLIT, SPLIT-lora, SPLIT-local_weight): `benchmarks/quality.py`'s cells,
  read from (or computed into) its cache folder with its own file names.

Every method goes through the same comparison protocol (split_plugin.analysis.protocol):
`evaluate` for vectors, `evaluate_with` and `score_forward` for pyreft (its grid placed by the
median of its input-dependent edit at m = 1). The peers are trained at m = 1, so that is their
trained point. Strengths are chosen on the 40 held-back validation pairs; the test split is
scored at those choices only. Cells are the Evaluations' JSON under --out (gitignored), skipped
when present, so an interrupted run resumes; the grid runs seed-major, and the methods without
randomness (steering-vectors, repeng, CAA) run once per concept and count for every seed.
`--cached-only` reports what a cut-short run has computed. The report: per method, test accuracy
within a held-out perplexity increase of 2 / 5 / 10% (mean ± 95% t-interval over seeds), the
strength chosen for +5% and its perplexity change, a frontier plot (test accuracy against the
budget; frontier.png under --out and a small copy in docs/peers_frontier.png), training/extraction
speed, and a reading computed from the numbers; with --markdown it replaces the section between
`<!-- peers:begin -->` and `<!-- peers:end -->` of that file (appended if missing) and nothing else.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import math
import os
import platform
import shlex
import sys
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (benchmarks/quality.py: cells, splits, intervals, the frontier figure)
from _markdown import write_section  # noqa: E402

from split_plugin import Intervention, load_default_model, load_heldout_text, sweep  # noqa: E402
from split_plugin.analysis.protocol import BUDGETS, RELATIVE_GRID, Evaluation, evaluate, evaluate_with  # noqa: E402
from split_plugin.analysis.result import SweepResult  # noqa: E402
from split_plugin.data import HELDOUT_WORDS, encode_pairs, encode_texts, format_prompt  # noqa: E402
from split_plugin.layers import resolve_layout  # noqa: E402
from split_plugin.objectives import AnswerTokens, sequence_logprobs  # noqa: E402
from split_plugin.strength import edit_ratio, matched_multipliers  # noqa: E402

PEERS = ("steering-vectors", "repeng", "pyreft-NoReFT", "pyreft-LoReFT")
OURS = ("CAA", "SFT", "SPLIT", "SPLIT-lora", "SPLIT-local_weight")
METHODS = PEERS + OURS
DETERMINISTIC = ("steering-vectors", "repeng", "CAA")  # no randomness: one run serves every seed
GLOSSARY = [
    "Methods: **SPLIT** / **SFT** / **CAA** are ours in the vector form (one vector added at layer 15); "
    "**SPLIT-lora** is the SPLIT objective trained as a low-rank update of the layer's down projection; "
    "**LoRA** (quality grid only) is plain peft LoRA fine-tuning on the positive answers. Every method is "
    "evaluated under the same protocol: the relative-strength grid plus the multipliers it was trained at, "
    "the strength per budget chosen on validation pairs. Seeds: trained methods run once per seed; the "
    "deterministic ones (" + ", ".join(DETERMINISTIC) + ") run once and count for every seed, hence their "
    "± 0.000. A seeds count below 3 means the remaining cells have not been computed yet (a rerun fills them in).",
]
LIBRARY = {"steering-vectors": "steering-vectors", "repeng": "repeng", "pyreft-NoReFT": "pyreft",
           "pyreft-LoReFT": "pyreft"}
INSTALL = "pip install --no-deps -r requirements-peers.txt && pip install -r requirements-peers-deps.txt"
LAYER = 15
ORIENT_PAIRS = 16


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    quality.add_grid_arguments(p, list(METHODS))
    p.add_argument("--reft-rank", type=int, default=4)
    p.add_argument("--reft-epochs", type=int, default=2, help="pyreft epochs (default: our presets' 2)")
    p.add_argument("--reft-lr", type=float, default=4e-3, help="pyreft learning rate (its README's 4e-3)")
    p.add_argument("--reft-batch-size", type=int, default=4)
    p.add_argument("--out", default="benchmarks/results/peers")
    p.add_argument("--quality-out", default="benchmarks/results/quality",
                   help="quality.py's cache folder: our methods' cells are read from / written to it")
    p.add_argument("--markdown", default="BENCHMARKS.md", help="file whose peers section is rewritten ('' = none)")
    p.add_argument("--docs-png", default="docs/peers_frontier.png", help="small copy of the plot ('' = none)")
    p.add_argument("--cached-only", action="store_true",
                   help="report the cells already computed; train nothing (to report a run that was cut short)")
    return p.parse_args(argv)


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


def our_sequences(cell: Evaluation) -> int:
    """Answer rows our trainer runs: 2 per pair with the negative answer, x2 with sub rows, x epochs."""
    c, n = cell.extra["config"], cell.extra["train_pairs"]
    if c.get("method") == "caa":
        return 2 * n
    needs_negative = c.get("method") == "reps" or c.get("neg_weight", 0) > 0 or c.get("margin_weight", 0) > 0
    per_pair = (2 if needs_negative else 1) * (2 if c.get("sub_rows") else 1)
    return per_pair * n * int(c.get("epochs", 1))


# -- aggregation -------------------------------------------------------------------------------------
def summarize(cells: list[Evaluation], methods: list[str]) -> dict:
    """Per method: test accuracy at each budget (validation choice), the +5% choice, speed, the frontier."""
    out = {}
    for method in methods:
        runs = [c for c in cells if c.name == method]
        if not runs:
            continue
        seqs = [c.extra.get("train_sequences") or our_sequences(c) for c in runs]
        edits = [c.extra["median_edit_norm"] for c in runs if "median_edit_norm" in c.extra]
        out[method] = {
            "n": len(runs), "params": runs[0].params,
            "collapsed": all(c.extra.get("collapsed") for c in runs),
            "at_budget": {b: quality.stat(runs, lambda e, b=b: e.at_budget(b)["accuracy"]) for b in BUDGETS},
            "strength": quality.stat(runs, lambda e: e.at_budget(0.05)["strength"]),
            "ppl": quality.stat(runs, lambda e: e.at_budget(0.05)["ppl_increase"]),
            "pairs_per_s": float(np.mean([c.extra["train_pairs"] / c.train_seconds for c in runs])),
            "seqs_per_s": float(np.mean([s / c.train_seconds for s, c in zip(seqs, runs)])),
            "seconds": float(np.mean([c.train_seconds for c in runs])),
            "edit": float(np.median(edits)) if edits else None,
        }
    return out


def reading(stats: dict, baseline: float) -> list[str]:
    """Sentences computed from the numbers: who leads at each budget, by how much, and speed."""
    ours = [m for m in stats if m in OURS]
    peers = [m for m in stats if m in PEERS and not stats[m]["collapsed"]]
    lines = []
    if not ours or not peers:
        return ["Only one side (ours or peers) was run, so there is nothing to compare."]
    for b in BUDGETS:
        best_our, best_peer = best_at(stats, ours, b), best_at(stats, peers, b)
        (mo, ho), (mp, hp) = stats[best_our]["at_budget"][b], stats[best_peer]["at_budget"][b]
        gap = mo - mp
        overlap = (math.isfinite(ho) and math.isfinite(hp) and abs(gap) <= ho + hp)
        if abs(gap) < 1e-9:
            verdict = "tie"
        elif gap > 0:
            verdict = "we lead" + (" (intervals overlap)" if overlap else "")
        else:
            verdict = "the peer leads" + (" (intervals overlap)" if overlap else "")
        lines.append(f"- Within +{b:.0%} perplexity: best of ours {best_our} {mo:.3f}, best peer {best_peer} "
                     f"{mp:.3f} (unsteered {baseline:.3f}): {verdict}, gap {gap:+.3f}.")
    best_split = best_at(stats, [m for m in ours if m.startswith("SPLIT")], 0.05)
    if best_split:
        best_peer = best_at(stats, peers, 0.05)
        (ms, hs), (mp, hp) = stats[best_split]["at_budget"][0.05], stats[best_peer]["at_budget"][0.05]
        overlap = math.isfinite(hs) and math.isfinite(hp) and abs(ms - mp) <= hs + hp
        lines.append(f"- SPLIT (best form: {best_split}, {ms:.3f}) {'beats' if ms > mp else 'does not beat'} "
                     f"every peer's test accuracy within +5% perplexity ({best_peer}, {mp:.3f})"
                     + (", but the 95% intervals overlap." if overlap else "."))
    if all(stats[m]["n"] < 2 for m in stats):
        lines.append("- One seed only: no intervals, so gaps of a few test pairs are within noise.")
    collapsed = [m for m in stats if stats[m]["collapsed"]]
    if collapsed:
        lines.append(f"- {', '.join(collapsed)}: collapsed in training (zero edit), shown at the unsteered accuracy.")
    fastest = max(stats, key=lambda m: stats[m]["pairs_per_s"])
    slowest = min(stats, key=lambda m: stats[m]["pairs_per_s"])
    lines.append(f"- Speed: fastest {fastest} ({stats[fastest]['pairs_per_s']:.1f} pairs/s), slowest {slowest} "
                 f"({stats[slowest]['pairs_per_s']:.2f} pairs/s).")
    if any(p.startswith("pyreft") for p in stats) and any(m != "CAA" for m in ours):
        lines.append("- Speed per pair and per training sequence differ (see the ratio table): pyreft trains one "
                     "row per pair and epoch, the positive answer; ours adds sub rows, and for SPLIT the negative "
                     "answers.")
    return lines


def best_at(stats: dict, methods: list[str], budget: float) -> str | None:
    """The method with the highest mean test accuracy at the budget (first on ties)."""
    return max(methods, key=lambda m: stats[m]["at_budget"][budget][0]) if methods else None


def speed_ratios(stats: dict, ours: str, peer: str) -> tuple[float, float]:
    """(pairs/s ratio, training sequences/s ratio) of one of our methods over a peer."""
    return (stats[ours]["pairs_per_s"] / stats[peer]["pairs_per_s"],
            stats[ours]["seqs_per_s"] / stats[peer]["seqs_per_s"])


def fmt(pair, pct=False, sig=False) -> str:
    return quality.fmt(*pair, pct=pct, sig=sig)


def method_rows(stats: dict, methods: list[str]) -> list[str]:
    """The per-concept table: test accuracy per budget, the +5% choice, speed."""
    lines = ["| method | params | test acc @ ppl +2% | @ +5% | @ +10% | strength @ +5% | ppl there | train s "
             "| pairs/s | seq/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for method in (m for m in methods if m in stats):
        s = stats[method]
        accs = " | ".join("collapsed" if s["collapsed"] else fmt(s["at_budget"][b]) for b in BUDGETS)
        lines.append(f"| {method} | {s['params']} | {accs} | {fmt(s['strength'], sig=True)} | "
                     f"{fmt(s['ppl'], pct=True)} | {s['seconds']:.1f} | {s['pairs_per_s']:.2f} | "
                     f"{s['seqs_per_s']:.2f} |")
    return lines


def report(args, cells: list[Evaluation], methods: list[str], argv: list[str]) -> tuple[str, dict]:
    versions = peer_versions()
    # the command that computes the cells (a --cached-only rerun only re-reads them)
    command = " ".join(["python benchmarks/peers.py", *map(shlex.quote, [a for a in argv if a != "--cached-only"])])
    header = [f"Command: `{command}`  ",
              f"Date: {date.today().isoformat()}; machine: {os.cpu_count()} cores, {platform.machine()}; "
              + ", ".join(f"{k} {v}" for k, v in versions.items() if v) + ".  ",
              f"Model: embedded SmolLM2-135M-Instruct, layer {LAYER}. {quality.protocol_line()} pyreft's "
              f"strengths use the median of its input-dependent edit. Install: `{INSTALL}`.", "", *GLOSSARY, ""]
    all_stats = {concept: summarize(mine, methods) for concept in args.concepts
                 if (mine := [c for c in cells if c.extra["concept"] == concept])}
    lines = ["#### Per concept", ""]
    for concept, stats in all_stats.items():
        mine = [c for c in cells if c.extra["concept"] == concept]
        base, x = quality.unsteered(mine), mine[0].extra
        seeds = sorted({c.extra["seed"] for c in mine})
        lines += [f"##### {concept} ({x['test_pairs']} test pairs, {x['validation_pairs']} validation pairs, "
                  f"{x['train_pairs']} training pairs, seeds {seeds}; unsteered test accuracy {base:.3f})", "",
                  "Test accuracy within a held-out perplexity increase, at the strength chosen on the validation "
                  "pairs (mean ± 95% CI over seeds), the relative strength chosen for +5% and its perplexity "
                  "change, and training/extraction speed:", "", *method_rows(stats, methods)]
        edits = [f"{m} {stats[m]['edit']:.3g}" for m in stats if stats[m]["edit"] is not None]
        if edits:
            lines += ["", "pyreft median edit norm at m = 1 on held-out tokens: " + ", ".join(edits) + "."]
        ours = [m for m in stats if m in OURS]
        peers = [m for m in stats if m in PEERS]
        if ours and peers:
            lines += ["", "Speed, ours over each peer as ratios of pairs/s and of training sequences/s "
                      "(> 1 = ours faster):", "",
                      "| ours \\ peer | " + " | ".join(peers) + " |", "|---" * (len(peers) + 1) + "|"]
            for m in ours:
                lines.append(f"| {m} | " + " | ".join(f"{speed_ratios(stats, m, p)[0]:.2f} pairs, "
                                                       f"{speed_ratios(stats, m, p)[1]:.2f} seq" for p in peers) + " |")
        lines += ["", "Reading (generated from the numbers above):", "", *reading(stats, base), ""]
    # the answer first (summary, verdict, plot), then what was run and the per-concept detail
    return "\n".join(summary(all_stats) + ["{plot}", ""] + header + lines), all_stats


def summary(all_stats: dict) -> list[str]:
    """One row per concept: SPLIT's best form against the best peer within +5% perplexity, and a verdict."""
    rows, gaps = [], []
    for concept, stats in all_stats.items():
        best_split = best_at(stats, [m for m in stats if m.startswith("SPLIT")], 0.05)
        best_peer = best_at(stats, [m for m in stats if m in PEERS and not stats[m]["collapsed"]], 0.05)
        if not best_split or not best_peer:
            continue
        gap = stats[best_split]["at_budget"][0.05][0] - stats[best_peer]["at_budget"][0.05][0]
        gaps.append(gap)
        rows.append(f"| {concept} | {best_split} {fmt(stats[best_split]['at_budget'][0.05])} | "
                    f"{best_peer} {fmt(stats[best_peer]['at_budget'][0.05])} | {gap:+.3f} |")
    if not rows:
        return []
    verdict = ("SPLIT trails the best peer on at least one concept" if min(gaps) < 0
               else "SPLIT matches or leads the best peer on every concept")
    return ["#### Summary: SPLIT (best form) against the best peer, test accuracy within +5% perplexity "
            "(strength chosen on validation)", "",
            "| concept | SPLIT | best peer | gap |", "|---|---|---|---|", *rows, "",
            f"{verdict}; a gap smaller than the intervals (± 95% CI over seeds) is a tie, not a lead.", ""]


def write_markdown(path: Path, text: str) -> None:
    """Replace only the peers section of the file (appended with a heading if missing)."""
    write_section(path, "peers", "Peers: steering-vectors, repeng, pyreft (benchmarks/peers.py)", text)


def quality_args(args) -> argparse.Namespace:
    """The settings quality.py would use for the same cells (so its cache file names match)."""
    return argparse.Namespace(train_pairs=args.train_pairs, test_pairs=args.test_pairs, epochs=None,
                              kl_weight=None)


def run_cell(concept: str, method: str, seed: int, qargs, reft, text: str) -> Evaluation:
    """One cell on a freshly loaded model: pyvene clears every forward hook of the model it wraps,
    including the ones transformers uses to return hidden states, so no cell may see what an earlier
    one left."""
    model, tokenizer = load_default_model()
    if method in OURS:
        return quality.run_cell(model, tokenizer, concept, method, seed, qargs, text)
    train_pairs, val_pairs, test_pairs = quality.split_pairs(concept, qargs)
    cell = run_peer_cell(model, tokenizer, method, train_pairs, val_pairs, {"test": test_pairs}, text, seed,
                         reft=reft)
    cell.extra["concept"] = concept
    return cell


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    out, qout = Path(args.out), Path(args.quality_out)
    out.mkdir(parents=True, exist_ok=True)
    qout.mkdir(parents=True, exist_ok=True)
    missing = [m for m in args.methods if m in PEERS and m not in installed_peers()]
    if missing:
        raise SystemExit(f"peer libraries missing for {missing}; install them with: {INSTALL}")
    text = load_heldout_text(words=HELDOUT_WORDS)
    qargs = quality_args(args)
    reft = SimpleNamespace(rank=args.reft_rank, epochs=args.reft_epochs, lr=args.reft_lr,
                           batch_size=args.reft_batch_size)
    tag = (f"{quality.cell_tag(qargs)}-r{reft.rank}-e{reft.epochs}-lr{reft.lr:g}-b{reft.batch_size}")

    def path_of(concept: str, method: str, seed: int) -> Path:
        if method in OURS:
            return qout / f"{quality.cell_tag(qargs)}-{concept}-{method}-{seed}.json"
        return out / f"{tag}-{concept}-{method}-{seed}.json"

    # seed-major: a run cut short still covers every concept and method with the seeds it got to
    grid = [(c, m, s) for s in args.seeds for c in args.concepts for m in args.methods]
    cells = quality.collect(grid, path_of, lambda c, m, s: run_cell(c, m, s, qargs, reft, text),
                            DETERMINISTIC, args.cached_only, desc="peers grid")
    text_md, all_stats = report(args, cells, args.methods, argv)
    curves = quality.frontier_curves(cells, list(all_stats), args.methods)
    pngs = [(out / "frontier.png", 110)] + ([(Path(args.docs_png), 60)] if args.docs_png else [])
    quality.plot_frontier(curves, pngs, dashed=PEERS)
    text_md = text_md.replace("{plot}", f"![test accuracy against the perplexity budget]"
                                        f"({args.docs_png or out / 'frontier.png'})")
    print("\n" + text_md)
    if args.markdown:
        write_markdown(Path(args.markdown), text_md)
        print(f"written to {args.markdown}")


if __name__ == "__main__":
    main()
