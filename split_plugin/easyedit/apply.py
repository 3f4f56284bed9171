"""`apply_split_to_model`: the host's apply-function contract for SPLIT.

    apply(model, tok, requests, hparams, copy=False, return_orig_weights=False,
          keep_original_weight=False, **kwargs) -> (model, weights_copy)

The requests become contrastive pairs (question = prompt, positive = target_new, negative =
target_neg, else ground_truth), one intervention is trained on all of them, and it is hooked
into the model at `hparams.multiplier`. No weight changes, so there is nothing to write back:
`weights_copy` is an empty dict whose `items()` removes the hooks when the edit must not
persist (the wheel's restore path, `keep_original_weight=True`) and which removes them when
called (the git version's restore path for names in CALLABLE_RESTORE_ALGS).
"""
from __future__ import annotations

import copy as _copy
import dataclasses
import warnings
import weakref
from typing import Any, Mapping, Sequence

from torch import nn

from ..data import ContrastivePair
from ..errors import SplitPluginError
from ..intervention import Intervention, InterventionHandle
from ..layers import ModelLayout, resolve_layout
from ..trainer import train
from ._host import outside_cpu_fallback
from .hparams import SPLITHyperParams

#: the wheel's default ground_truth when none is given
WHEEL_PLACEHOLDER = "<|endoftext|>"
_NO_NEGATIVE = "\u2205"  # stands in for a missing negative answer; never scored
#: the model attribute listing its SPLIT edits (present only while it has some)
EDITS_ATTR = "_split_plugin_edits"


class SplitWeightsCopy(dict):
    """The restore handle of one SPLIT edit, usable by both host versions.

    An empty dict: the host's write-back loop `for k, v in weights_copy.items()` writes
    nothing. `items()` first removes the edit's hooks when `restore_on_items` is set (the
    wheel passes keep_original_weight=True and then restores through `items()`); calling the
    object removes them unconditionally (the git version calls `weights_copy()` for methods in
    CALLABLE_RESTORE_ALGS). `intervention` is the trained intervention (save it with
    `.intervention.save_pretrained(dir)`), `multiplier` its applied strength.
    """

    def __init__(self, handle: InterventionHandle, model: nn.Module, restore_on_items: bool):
        super().__init__()
        self.handle = handle
        self.intervention: Intervention = handle.intervention
        self.multiplier = handle.multiplier
        self.restore_on_items = restore_on_items
        self._model = weakref.ref(model)

    @property
    def active(self) -> bool:
        return bool(self.handle._hooks)

    def restore(self) -> None:
        """Remove the edit's hooks (safe to call twice)."""
        self.handle.remove()
        model = self._model()
        if model is not None:
            _track(model, [w for w in _edits(model) if w is not self])

    def __call__(self) -> None:
        self.restore()

    def items(self):
        if self.restore_on_items:
            self.restore()
        return super().items()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return (f"SplitWeightsCopy({self.intervention.form} at layer {self.intervention.layer}, "
                f"multiplier={self.multiplier}, {state})")


def _edits(model: nn.Module) -> list[SplitWeightsCopy]:
    return list(model.__dict__.get(EDITS_ATTR, ()))


def _track(model: nn.Module, edits: list[SplitWeightsCopy]) -> None:
    """Record the model's edits on the model itself; the attribute goes when the last edit does."""
    if edits:
        model.__dict__[EDITS_ATTR] = edits
    else:
        model.__dict__.pop(EDITS_ATTR, None)


def active_edits(model: nn.Module) -> list[SplitWeightsCopy]:
    """The SPLIT edits still hooked into `model` (persisting edits accumulate)."""
    return [w for w in _edits(model) if w.active]


def undo_edits(model: nn.Module) -> int:
    """Remove every SPLIT edit hooked into `model`; returns how many there were."""
    edits = active_edits(model)
    for w in edits:
        w.restore()
    return len(edits)


# -- requests -> pairs -----------------------------------------------------------------------------------
def _text(value: Any) -> str | None:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return value if isinstance(value, str) and value.strip() else None


def negative_answer(request: Mapping) -> str | None:
    """`target_neg` (git), else `ground_truth` unless missing or the wheel's '<|endoftext|>'."""
    for key in ("target_neg", "ground_truth"):
        value = _text(request.get(key))
        if value is not None and value.strip() != WHEEL_PLACEHOLDER:
            return value
    return None


def requests_to_pairs(requests: Sequence[Mapping]) -> tuple[list[ContrastivePair], list[int]]:
    """One pair per request, and the indices of the requests that had no negative answer."""
    pairs, missing = [], []
    for i, request in enumerate(requests):
        if not isinstance(request, Mapping):
            raise SplitPluginError(f"request {i} must be a dict with 'prompt' and 'target_new', "
                                   f"got {type(request).__name__}")
        prompt, target = _text(request.get("prompt")), _text(request.get("target_new"))
        if prompt is None or target is None:
            raise SplitPluginError(f"request {i} needs a non-empty 'prompt' and 'target_new', got "
                                   f"prompt={request.get('prompt')!r}, target_new={request.get('target_new')!r}")
        negative = negative_answer(request)
        if negative is None:
            missing.append(i)
            negative = _NO_NEGATIVE if target.strip() != _NO_NEGATIVE else _NO_NEGATIVE * 2
        try:
            pairs.append(ContrastivePair(question=prompt, positive=target, negative=negative,
                                         metadata={"request": i, "has_negative": i not in missing}))
        except SplitPluginError as exc:
            raise SplitPluginError(f"request {i}: {exc}") from None
    return pairs, missing


# -- the apply function ---------------------------------------------------------------------------------
def as_hparams(hparams: Any) -> SPLITHyperParams:
    if isinstance(hparams, SPLITHyperParams):
        return hparams
    if isinstance(hparams, Mapping):
        return SPLITHyperParams.from_dict(hparams)
    raise SplitPluginError(f"SPLIT needs SPLITHyperParams (alg_name: SPLIT), got {type(hparams).__name__} "
                           f"with alg_name {getattr(hparams, 'alg_name', None)!r}")


def check_model(model: Any, hparams: SPLITHyperParams) -> ModelLayout:
    """The model's layout, or one clear error: not a causal LM, unknown layout, layer out of range."""
    if not isinstance(model, nn.Module):
        raise SplitPluginError(f"SPLIT edits a loaded torch model; BaseEditor has {type(model).__name__} "
                               f"for model_name {str(hparams.model_name)!r}")
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        raise SplitPluginError(f"SPLIT steers decoder-only causal LMs; {type(model).__name__} "
                               "is an encoder-decoder model")
    layout = resolve_layout(model)
    layout.check_layer(hparams.layer)
    return layout


def apply_split_to_model(model: nn.Module, tok: Any, requests: Sequence[Mapping] | Mapping,
                         hparams: SPLITHyperParams, copy: bool = False, return_orig_weights: bool = False,
                         keep_original_weight: bool = False, **kwargs: Any) -> tuple[nn.Module, SplitWeightsCopy]:
    """Train one SPLIT intervention on `requests` and hook it into the model.

    `copy=True` edits a deep copy. `return_orig_weights` is accepted for the host's contract;
    the returned restore handle is the same either way. With `keep_original_weight=False`
    the edit persists through the wheel's restore loop; `weights_copy()` always removes it.
    If training fails, the model is left exactly as it was (no hooks, same flags and modes).
    """
    hparams = as_hparams(hparams)
    requests = [requests] if isinstance(requests, Mapping) else list(requests)
    if not requests:
        raise SplitPluginError("apply_split_to_model got no requests")
    if copy:
        model = _copy.deepcopy(model)
    layout = check_model(model, hparams)
    pairs, missing = requests_to_pairs(requests)
    device = next(model.parameters()).device
    config = hparams.to_train_config(device=str(device))
    if missing:
        if config.method not in ("split", "sft"):
            raise SplitPluginError(
                f"method {config.method!r} needs a negative answer for every request, but request(s) "
                f"{missing} have none; pass target_neg (git EasyEdit) or ground_truth")
        warnings.warn(  # Python's default filter shows it once per call site
                   f"SPLIT: {len(missing)} of {len(requests)} request(s) have no negative answer (no "
                   "target_neg, and ground_truth missing or '<|endoftext|>'); training on the utility "
                   "term only (neg_weight = margin_weight = 0, no sub rows). Pass target_neg (git "
                   "EasyEdit) or ground_truth to train the preference margin.", UserWarning, stacklevel=2)
        config = dataclasses.replace(config, neg_weight=0.0, margin_weight=0.0, sub_rows=False)
    side = getattr(tok, "padding_side", None)
    try:
        if side is not None:
            tok.padding_side = "right"  # hosts set "left"; our batches carry their own masks
        with outside_cpu_fallback():  # our training names no cuda device; run it at full speed
            intervention = train(model, tok, pairs, config)
    finally:
        if side is not None:
            tok.padding_side = side
    handle = intervention.steer(model, hparams.resolved_multiplier(), layout=layout)
    weights_copy = SplitWeightsCopy(handle, model, restore_on_items=bool(keep_original_weight))
    _track(model, _edits(model) + [weights_copy])
    return model, weights_copy
