"""Steered text generation: the chat-templated prompt, the intervention hooked at strength m."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .data import format_prompt
from .intervention import Intervention, Multiplier


@torch.no_grad()
def generate(model: nn.Module, tokenizer, prompts: Sequence[str], intervention: Intervention | None = None,
             multiplier: Multiplier = 1.0, max_new_tokens: int = 48, do_sample: bool = False,
             temperature: float = 0.7, top_p: float = 0.9, seed: int = 0,
             system_prompt: str | None = None) -> list[str]:
    """Answer each prompt (greedy unless `do_sample`), with the intervention applied at `multiplier`."""
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
                   pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    if do_sample:
        options.update(temperature=temperature, top_p=top_p)
    with torch.random.fork_rng(devices=[]):  # seeded sampling without touching the caller's RNG
        torch.manual_seed(seed)
        if intervention is None:
            out = model.generate(**enc, **options)
        else:
            with intervention.steer(model, multiplier=multiplier):
                out = model.generate(**enc, **options)
    new = out[:, enc["input_ids"].shape[1]:]
    return [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
