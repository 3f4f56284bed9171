"""Where steering moves the residual stream: along the concept, or off the activation manifold.

For each multiplier m and each inspected layer (L, and L+2, L+4 where they exist) the shift
`steered - unsteered` at the same token of the evaluation prompts is split into:

- `along`: its projection on the unit concept direction (CAA mean difference at that layer,
  or a given vector), and `orthogonal`: the norm of the rest;
- off-manifold distances of the steered activation from the cloud of UNSTEERED activations
  on held-out text (plus optional reference prompts): `off_subspace`, the distance to the
  top-k principal affine subspace (around the cloud's mean), and `knn`, the mean distance to
  its k nearest cloud points. `*_excess` is the same distance minus the unsteered token's own.

Every number is a median over tokens divided by the median norm of the unsteered activations
at that layer, so layers and models compare. The first token of every row is left out (its
activation is an outlier, "attention sink", on most models).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from scipy import stats
from torch import nn
from tqdm.auto import tqdm

from ..data import ContrastivePair, encode_pairs, encode_texts, load_heldout_text
from ..errors import SplitPluginError
from ..fileio import atomic_write_text
from ..intervention import Intervention
from ..caa import mean_differences
from ..forward import layer_outputs
from ..layers import ModelLayout, resolve_layout
from ..safety import frozen
from .result import SweepResult, _jsonable, _nan
from .stats import check_multipliers


def inner_tokens(attention_mask: torch.Tensor) -> torch.Tensor:
    """Real tokens except each row's first one ([B, T] bool)."""
    mask = attention_mask.bool()
    return mask & (mask.long().cumsum(1) > 1)


def concept_direction(model: nn.Module, tokenizer, pairs: Sequence[ContrastivePair], layer: int,
                      *, batch_size: int = 8, max_length: int = 256, system_prompt: str | None = None,
                      layout: ModelLayout | None = None) -> torch.Tensor:
    """Unit CAA direction at `layer`: mean over pairs of (mean positive-answer state - negative)."""
    return _caa_directions(layout or resolve_layout(model), tokenizer, list(pairs), [layer],
                           batch_size, max_length, system_prompt)[layer]


def _caa_directions(layout: ModelLayout, tokenizer, pairs: list[ContrastivePair], layers: list[int],
                    batch_size: int, max_length: int, system_prompt: str | None) -> dict[int, torch.Tensor]:
    """Unit mean-difference directions at each layer."""
    if not pairs:
        raise SplitPluginError("a concept direction needs at least one pair")
    with frozen(layout.model):
        means = mean_differences(layout, tokenizer, pairs, layers, batch_size, max_length, system_prompt)
    out = {}
    for i in layers:
        v = means[i]
        if v.norm() == 0:
            raise SplitPluginError(f"the positive and negative answers give identical states at layer {i}; "
                                   "pass a direction= explicitly")
        out[i] = v / v.norm()
    return out


@dataclass
class ReferenceCloud:
    """Unsteered activations at one layer: their mean, top-k principal directions and the points."""

    points: torch.Tensor   # [n, d]
    mean: torch.Tensor     # [d]
    basis: torch.Tensor    # [k, d], orthonormal rows

    @classmethod
    def fit(cls, points: torch.Tensor, n_components: int = 16) -> "ReferenceCloud":
        """PCA of the cloud (affine: around its mean), keeping `n_components` directions."""
        points = points.float()
        if points.ndim != 2 or points.shape[0] < 2:
            raise SplitPluginError(f"a reference cloud needs at least 2 points of shape [n, d], got "
                                   f"{tuple(points.shape)}; give more held-out text")
        mean = points.mean(0)
        k = max(1, min(n_components, points.shape[0] - 1, points.shape[1]))
        _, _, vh = torch.linalg.svd(points - mean, full_matrices=False)
        return cls(points=points, mean=mean, basis=vh[:k])

    def off_subspace(self, x: torch.Tensor) -> torch.Tensor:
        """Distance of each row of x from the affine principal subspace."""
        centred = x.float() - self.mean
        return (centred - (centred @ self.basis.T) @ self.basis).norm(dim=-1)

    def knn_distance(self, x: torch.Tensor, k: int = 10, chunk: int = 1024) -> torch.Tensor:
        """Mean Euclidean distance of each row of x to its k nearest cloud points."""
        k = max(1, min(k, self.points.shape[0]))
        out = [torch.cdist(part.float(), self.points).topk(k, largest=False).values.mean(-1)
               for part in x.split(chunk)]
        return torch.cat(out) if out else x.new_zeros(0)


@dataclass
class ManifoldReport:
    """One row per (multiplier, layer) of median, norm-scaled shift and distance statistics."""

    rows: list[dict]
    metadata: dict = field(default_factory=dict)

    def series(self, key: str = "off_subspace_excess", layer: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(multipliers, values) of one statistic at one layer (default: the intervention's)."""
        layer = self.metadata.get("layer") if layer is None else layer
        chosen = [r for r in self.rows if r["layer"] == layer]
        if not chosen or key not in chosen[0]:
            raise SplitPluginError(f"no {key!r} at layer {layer}; have layers "
                                   f"{sorted({r['layer'] for r in self.rows})} and keys {sorted(self.rows[0])}")
        return np.array([r["multiplier"] for r in chosen]), np.array([r[key] for r in chosen], float)

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> "ManifoldReport":
        rows = [{k: _nan(v) for k, v in row.items()} for row in data["rows"]]
        return cls(rows=rows, metadata=dict(data.get("metadata", {})))

    def to_json(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")


@torch.no_grad()
def principal_basis(layout: ModelLayout, tokenizer, text: str, layer: int, rank: int,
                    max_length: int = 128) -> torch.Tensor:
    """[rank, d] orthonormal top principal directions of unsteered layer-`layer` states on `text`."""
    ids, mask, _ = encode_texts(tokenizer, [text], max_length=max_length)
    device = next(layout.model.parameters()).device
    states = layer_outputs(layout, ids.to(device), mask.to(device), [layer])[layer]
    return ReferenceCloud.fit(states[inner_tokens(mask).to(device)], rank).basis


def _token_states(layout: ModelLayout, batches: list, layers: list[int], keep: torch.Tensor | None
                  ) -> dict[int, torch.Tensor]:
    """Per layer, [n, d] states of the inner tokens of all batches (rows `keep` of them, if given)."""
    parts: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    for ids, mask in batches:
        states = layer_outputs(layout, ids, mask, layers)
        inner = inner_tokens(mask)
        for i in layers:
            parts[i].append(states[i][inner])
    return {i: _take(torch.cat(p), keep) for i, p in parts.items()}


def _take(t: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    return t if index is None else t[index.to(t.device)]


def _subsample(n: int, limit: int, seed: int) -> torch.Tensor | None:
    """A fixed random subset of `limit` indices out of n (None = keep all)."""
    if n <= limit:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values


def _statistics(steered: torch.Tensor, unsteered: torch.Tensor, direction: torch.Tensor,
                cloud: ReferenceCloud, knn: int, scale: float) -> dict[str, float]:
    """Median along/orthogonal shift and off-manifold distances, divided by `scale`."""
    shift = steered - unsteered
    along = shift @ direction
    orthogonal = (shift - along[:, None] * direction).norm(dim=-1)
    off_s, off_u = cloud.off_subspace(steered), cloud.off_subspace(unsteered)
    knn_s, knn_u = cloud.knn_distance(steered, knn), cloud.knn_distance(unsteered, knn)
    med = lambda t: float(t.median()) / scale  # noqa: E731
    return {"along": med(along), "orthogonal": med(orthogonal), "shift_norm": med(shift.norm(dim=-1)),
            "off_subspace": med(off_s), "off_subspace_excess": med(off_s - off_u),
            "knn": med(knn_s), "knn_excess": med(knn_s - knn_u)}


def manifold_report(model: nn.Module, tokenizer, intervention: Intervention,
                    pairs: Sequence[ContrastivePair], multipliers: Sequence[float], *,
                    reference_text: str | bool = True, reference_pairs: Sequence[ContrastivePair] = (),
                    direction: torch.Tensor | None = None, layers: Sequence[int] | None = None,
                    n_components: int = 16, knn: int = 10, batch_size: int = 8, max_length: int = 128,
                    max_reference_tokens: int = 4000, max_query_tokens: int = 2000,
                    system_prompt: str | None = None, seed: int = 0, progress: bool = True,
                    layout: ModelLayout | None = None) -> ManifoldReport:
    """Per (multiplier, layer): how far steering moves states along the concept and off the manifold.

    `reference_text=True` uses the bundled held-out text for the unsteered cloud; the queries
    are the tokens (prompt and both answers) of `pairs`. `direction` (hidden-size vector) is
    used at every layer; by default each layer gets its own CAA direction from `pairs`.
    """
    ms = check_multipliers(multipliers)
    pairs = list(pairs)
    if not pairs:
        raise SplitPluginError("manifold_report needs at least one pair to steer")
    layout = layout or resolve_layout(model)
    layers = _layers(layout, intervention.layer, layers)
    device = next(model.parameters()).device
    text = load_heldout_text() if reference_text is True else reference_text or None
    with frozen(model), torch.no_grad():
        references = (_text_batches(tokenizer, text, max_length, batch_size, device) if text else []) + \
            _pair_batches(tokenizer, list(reference_pairs), max_length, batch_size, system_prompt, device)
        clouds = _clouds(layout, references, layers, n_components, max_reference_tokens, seed)
        directions = _directions(layout, tokenizer, pairs, layers, direction, batch_size, max_length,
                                 system_prompt)
        queries = _pair_batches(tokenizer, pairs, max_length, batch_size, system_prompt, device)
        keep = _subsample(int(sum(inner_tokens(m).sum() for _, m in queries)), max_query_tokens, seed + 1)
        base = _token_states(layout, queries, layers, keep)
        scale = {i: float(base[i].norm(dim=-1).median()) for i in layers}
        rows = []
        for m in tqdm(ms, desc="manifold", disable=not progress, leave=False):
            with intervention.steer(model, m, layout=layout):
                steered = _token_states(layout, queries, layers, keep)
            rows.extend({"multiplier": m, "layer": i,
                         **_statistics(steered[i], base[i], directions[i], clouds[i], knn, scale[i]),
                         "scale": scale[i], "n_tokens": int(base[i].shape[0])} for i in layers)
    meta = {"layer": intervention.layer, "layers": layers, "form": intervention.form,
            "concept": intervention.config.concept, "n_components": n_components, "knn": knn,
            "reference_tokens": int(clouds[layers[0]].points.shape[0]),
            "direction": "given" if direction is not None else "caa"}
    return ManifoldReport(rows=rows, metadata=meta)


def _clouds(layout: ModelLayout, batches: list, layers: list[int], n_components: int, limit: int,
            seed: int) -> dict[int, ReferenceCloud]:
    """Per layer, the reference cloud of unsteered states (at most `limit` random tokens)."""
    if not batches:
        raise SplitPluginError("no reference activations: pass reference_text or reference_pairs")
    states = _token_states(layout, batches, layers, None)
    return {i: ReferenceCloud.fit(_take(s, _subsample(len(s), limit, seed)), n_components)
            for i, s in states.items()}


def _layers(layout: ModelLayout, layer: int, layers: Sequence[int] | None) -> list[int]:
    """The inspected layers: given, or L, L+2, L+4 where they exist."""
    chosen = list(layers) if layers is not None else [layer + k for k in (0, 2, 4)]
    chosen = sorted({i for i in chosen if 0 <= i < layout.num_layers})
    if not chosen:
        raise SplitPluginError(f"no valid layers among {layers}; this model has {layout.num_layers}")
    return chosen


def _directions(layout, tokenizer, pairs, layers, direction, batch_size, max_length, system_prompt):
    """Unit concept direction per layer: the given vector everywhere, or CAA per layer."""
    if direction is None:
        return _caa_directions(layout, tokenizer, pairs, layers, batch_size, max_length, system_prompt)
    v = torch.as_tensor(direction, dtype=torch.float32).flatten()
    d = layout.down_proj_dims(layers[0])[1]
    if v.numel() != d or not torch.isfinite(v).all() or v.norm() == 0:
        raise SplitPluginError(f"direction must be a finite non-zero vector of size {d} (the hidden size)")
    v = (v / v.norm()).to(next(layout.model.parameters()).device)
    return {i: v for i in layers}


def _text_batches(tokenizer, text: str, max_length: int, batch_size: int, device) -> list:
    ids, mask, _ = encode_texts(tokenizer, text, max_length=max_length)
    return [(ids[s:s + batch_size].to(device), mask[s:s + batch_size].to(device))
            for s in range(0, ids.shape[0], batch_size)]


def _pair_batches(tokenizer, pairs: list, max_length: int, batch_size: int, system_prompt, device) -> list:
    out = []
    for s in range(0, len(pairs), batch_size):
        b = encode_pairs(tokenizer, pairs[s:s + batch_size], max_length=max_length, system_prompt=system_prompt)
        out.append((b.input_ids.to(device), b.attention_mask.to(device)))
    return out


# -- relating distance to utility loss -------------------------------------------------------
def utility_drop(result: SweepResult) -> tuple[np.ndarray, np.ndarray]:
    """(multipliers, mean UtilOdds at 0 minus at m): how much utility steering costs."""
    ms, util = result.multipliers, result.column("util_mean")
    return ms, util[list(ms).index(0.0)] - util


def _corr(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlation over the finite pairs of values."""
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    nan = float("nan")
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"n": int(x.size), "pearson_r": nan, "pearson_p": nan, "spearman_rho": nan, "spearman_p": nan}
    pr, sr = stats.pearsonr(x, y), stats.spearmanr(x, y)
    return {"n": int(x.size), "pearson_r": float(pr[0]), "pearson_p": float(pr[1]),
            "spearman_rho": float(sr[0]), "spearman_p": float(sr[1])}


def correlate(off_manifold: Sequence[float] | Mapping[str, Sequence[float]],
              util_drop: Sequence[float] | Mapping[str, Sequence[float]]) -> dict:
    """Pearson / Spearman correlation of off-manifold distance and utility drop across multipliers.

    Pass two equal-length sequences (one method), or two dicts keyed by method name: then the
    points of all methods are pooled, and `per_method` holds each method's own correlation.
    """
    if isinstance(off_manifold, Mapping) != isinstance(util_drop, Mapping):
        raise SplitPluginError("pass two sequences or two dicts keyed by method name, not one of each")
    if not isinstance(off_manifold, Mapping):
        x, y = np.asarray(off_manifold, float), np.asarray(util_drop, float)
        if x.shape != y.shape:
            raise SplitPluginError(f"off_manifold and util_drop differ in length: {x.shape} vs {y.shape}")
        return _corr(x, y)
    if set(off_manifold) != set(util_drop):
        raise SplitPluginError(f"method names differ: {sorted(off_manifold)} vs {sorted(util_drop)}")
    per = {k: correlate(off_manifold[k], util_drop[k]) for k in off_manifold}
    pooled = _corr(np.concatenate([np.asarray(off_manifold[k], float) for k in off_manifold]),
                   np.concatenate([np.asarray(util_drop[k], float) for k in off_manifold]))
    return {**pooled, "per_method": per}


def correlate_reports(sweeps: Mapping[str, SweepResult], manifolds: Mapping[str, ManifoldReport],
                      key: str = "off_subspace_excess") -> dict:
    """`correlate` on sweeps and manifold reports of the same methods, matched by multiplier."""
    off, drop = {}, {}
    for name in sweeps:
        if name not in manifolds:
            continue
        ms_u, d = utility_drop(sweeps[name])
        ms_o, o = manifolds[name].series(key)
        common = sorted(set(ms_u.tolist()) & set(ms_o.tolist()))
        off[name] = [o[list(ms_o).index(m)] for m in common]
        drop[name] = [d[list(ms_u).index(m)] for m in common]
    if not off:
        raise SplitPluginError("no method has both a sweep and a manifold report")
    return correlate(off, drop)
