"""Steered text generation: chat-templated prompts, the steering hooked at strength m.

`positions` says where the update applies: "all" (every position), "prompt" (the prompt's
tokens only; the generated tokens attend to the steered prompt) or "generated" (the tokens the
model produces only; the prompt, and so the first new token's distribution, is unsteered).
`multiplier` is one number, or one per prompt for batched generation at different strengths.
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch
from torch import nn

from .data import format_prompt
from .errors import SplitPluginError

POSITIONS = ("all", "prompt", "generated")
Prompts = Union[str, Sequence[str]]
Multipliers = Union[float, Sequence[float], torch.Tensor]


@torch.no_grad()
def generate(model: nn.Module, tokenizer, prompts: Prompts, intervention=None,
             multiplier: Multipliers = 1.0, max_new_tokens: int = 48, do_sample: bool = False,
             temperature: float = 0.7, top_p: float = 0.9, seed: int = 0,
             system_prompt: str | None = None, positions: str = "all") -> list[str]:
    """Answer each prompt (greedy unless `do_sample`) with `intervention` (an Intervention or a
    Composition) at `multiplier`; one string per prompt (a single string is one prompt)."""
    prompt_ids, out = generate_ids(model, tokenizer, prompts, intervention, multiplier,
                                   max_new_tokens=max_new_tokens, do_sample=do_sample,
                                   temperature=temperature, top_p=top_p, seed=seed,
                                   system_prompt=system_prompt, positions=positions)
    new = out[:, prompt_ids.shape[1]:]
    return [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]


def generate_ids(model: nn.Module, tokenizer, prompts: Prompts, intervention=None,
                 multiplier: Multipliers = 1.0, max_new_tokens: int = 48, do_sample: bool = False,
                 temperature: float = 0.7, top_p: float = 0.9, seed: int = 0,
                 system_prompt: str | None = None, positions: str = "all"):
    """The left-padded prompt ids and the full output ids of `generate` (prompt + new tokens)."""
    prompts = prompt_list(prompts)
    if positions not in POSITIONS:
        raise SplitPluginError(f"positions must be one of {POSITIONS}, got {positions!r}")
    rows = row_multipliers(multiplier, len(prompts))
    texts = [format_prompt(tokenizer, p, system_prompt=system_prompt) for p in prompts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    options = dict(max_new_tokens=max_new_tokens, do_sample=do_sample,
                   pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                   else tokenizer.eos_token_id)
    if do_sample:
        options.update(temperature=temperature, top_p=top_p)
    with torch.random.fork_rng(devices=[]):  # seeded sampling without touching the caller's RNG
        torch.manual_seed(seed)
        if intervention is None:
            out = model.generate(**enc, **options)
        else:
            with PositionSteering(model, intervention, rows.to(device), positions):
                out = model.generate(**enc, **options)
    return enc["input_ids"], out


def prompt_list(prompts: Prompts) -> list[str]:
    """One string is one prompt; a list must hold at least one string, and only strings."""
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise SplitPluginError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}")
    prompts = list(prompts)
    if not prompts:
        raise SplitPluginError("no prompts to answer: pass a string or a non-empty list of strings")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise SplitPluginError(f"every prompt must be a string, got {bad[0]!r}")
    return prompts


def row_multipliers(multiplier: Multipliers, batch: int) -> torch.Tensor:
    """A [batch] float tensor: one number repeated, or one given per prompt."""
    if torch.is_tensor(multiplier):
        values = multiplier.detach().float().flatten().cpu()
    elif isinstance(multiplier, (list, tuple)):
        try:
            values = torch.tensor([float(m) for m in multiplier])
        except (TypeError, ValueError):
            raise SplitPluginError(f"multipliers must be numbers, got {multiplier!r}") from None
    elif isinstance(multiplier, (int, float)) and not isinstance(multiplier, bool):
        values = torch.tensor([float(multiplier)])
    else:
        raise SplitPluginError(f"the multiplier must be a number or one number per prompt, got {multiplier!r}")
    if values.numel() == 1:
        values = values.expand(batch).clone()
    if values.numel() != batch:
        raise SplitPluginError(f"got {values.numel()} multipliers for {batch} prompts; give one number "
                               "or one per prompt")
    if not all(math.isfinite(v) for v in values.tolist()):
        raise SplitPluginError(f"the multiplier must be a finite number (or one finite number per prompt), "
                               f"got {values.tolist()}")
    return values


class PositionSteering:
    """Hooks each term at `m_i * row multiplier`, live only on the chosen positions.

    `model.generate` runs one forward over the whole prompt, then one per new token; a pre-hook
    on the model counts them and sets every term's live per-row multiplier before each forward.
    """

    def __init__(self, model: nn.Module, steering, rows: torch.Tensor, positions: str):
        from .composition import as_composition

        self.model, self.positions, self.calls = model, positions, 0
        terms = as_composition(steering).terms
        self.bases = [rows * float(m) for _, m in terms]
        self.live = [torch.zeros_like(b) for b in self.bases]
        self.handles: list = []
        self._pre = None
        try:
            for (intervention, _), live in zip(terms, self.live):
                self.handles.append(intervention.steer(model, live))
            self._pre = model.register_forward_pre_hook(self._before_forward)
        except BaseException:
            self.remove()
            raise

    def _before_forward(self, module, args) -> None:
        on = self.positions == "all" or (self.positions == "prompt") == (self.calls == 0)
        self.calls += 1
        for live, base in zip(self.live, self.bases):
            live.copy_(base if on else torch.zeros_like(base))

    def remove(self) -> None:
        while self.handles:
            self.handles.pop().remove()
        if self._pre is not None:
            self._pre.remove()
            self._pre = None

    def __enter__(self) -> "PositionSteering":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
