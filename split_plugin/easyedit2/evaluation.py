"""Our log-odds next to EasyEdit2's generation outputs.

steer/evaluate's Evaluator picks its metrics by name in one if/elif chain, with no place for
another; so `log_odds_report` is called beside it. It scores teacher-forced pairs on the
framework's model as applied (its slots active) and with every slot set aside (the model the
framework's `generate_orig_output` uses), and returns flat keys like the Evaluator's.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch

from ..objectives import preference_log_odds, utility_log_odds
from ..scoring import pair_logprobs
from .fields import dataset_pairs


@contextlib.contextmanager
def slots_aside(wrapper: Any) -> Iterator[None]:
    """Every layer's steering slots emptied for the block, then restored (as the framework's unsteered pass)."""
    blocks = list(wrapper._decoder_layers())
    saved = [(block.intervention_dict, block.add_activations_dict) for block in blocks]
    try:
        for block in blocks:
            block.intervention_dict, block.add_activations_dict = {}, {}
        yield
    finally:
        for block, (interventions, additions) in zip(blocks, saved):
            block.intervention_dict, block.add_activations_dict = interventions, additions


@torch.no_grad()
def _scores(wrapper: Any, pairs: list, prompt_format: str, max_length: int) -> dict[str, float]:
    lp_pos, lp_neg = pair_logprobs(wrapper.model, wrapper.tokenizer, pairs, prompt_format, max_length)
    pref = preference_log_odds(lp_pos, lp_neg)
    return {"pref_log_odds": pref.mean().item(), "util_log_odds": utility_log_odds(lp_pos, lp_neg).mean().item(),
            "pref_acc": (pref > 0).float().mean().item()}


def log_odds_report(wrapper: Any, dataset: Sequence[Any], use_chat_template: bool = False,
                    max_length: int = 256) -> dict[str, float]:
    """pref_log_odds, util_log_odds, pref_acc of the applied model, and `orig_*` of the unsteered one.

    `dataset` is in the framework's training format ({question, matching, not_matching}).
    """
    pairs = dataset_pairs(dataset)
    fmt = "chat" if use_chat_template else "plain"
    steered = _scores(wrapper, pairs, fmt, max_length)
    with slots_aside(wrapper):
        unsteered = _scores(wrapper, pairs, fmt, max_length)
    return {**steered, **{f"orig_{key}": value for key, value in unsteered.items()}}
