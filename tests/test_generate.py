"""`generate`: prompt handling, and where steering applies, checked against hand-written hooks."""
import pytest
import torch

import split_plugin as sp
from split_plugin.composition import compose
from split_plugin.generation import generate_ids

PROMPTS = ["Hi there", "A much longer prompt, padded less"]
NEW = 6


def rand_iv(model, form, layer, seed, scale=0.8):
    torch.manual_seed(seed)
    iv = sp.Intervention.for_model(model, form, layer, rank=3 if form == "lora" else None)
    with torch.no_grad():
        for p in iv.parameters():
            p.copy_(torch.randn_like(p) * scale)
    return iv


def by_hand(model, prompt_ids, vector, layer, rows, positions, new=NEW):
    """Greedy decoding with no cache: every step re-runs the whole sequence with a hook adding
    `m_row * v` at the chosen positions (the prompt is the first prompt_ids.shape[1] columns)."""
    seq, width = prompt_ids.clone(), prompt_ids.shape[1]
    pad_mask = (prompt_ids != 0).long()

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        pos = torch.arange(hidden.shape[1])
        where = {"all": torch.ones_like(pos, dtype=torch.bool), "prompt": pos < width,
                 "generated": pos >= width}[positions]
        add = rows.view(-1, 1, 1) * where.view(1, -1, 1).float() * vector.view(1, 1, -1)
        hidden = hidden + add.to(hidden.dtype)
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    handle = model.model.layers[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            for _ in range(new):
                mask = torch.cat([pad_mask, torch.ones(seq.shape[0], seq.shape[1] - width, dtype=torch.long)], 1)
                position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = model(input_ids=seq, attention_mask=mask, position_ids=position_ids,
                               use_cache=False).logits
                seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
    finally:
        handle.remove()
    return seq


@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
def test_positions_and_per_row_multipliers_match_hand_written_hooks(llama, tok, positions):
    iv = rand_iv(llama, "vector", 1, 0)
    rows = torch.tensor([3.0, -2.0])
    prompt_ids, out = generate_ids(llama, tok, PROMPTS, iv, multiplier=[3.0, -2.0], max_new_tokens=NEW,
                                   positions=positions)
    assert prompt_ids[0, 0] == 0  # the short prompt is left-padded: the check covers padding
    expected = by_hand(llama, prompt_ids, iv.vector.detach(), 1, rows, positions)
    assert torch.equal(out, expected)
    _, unsteered = generate_ids(llama, tok, PROMPTS, max_new_tokens=NEW)
    assert not torch.equal(out, unsteered)  # the steering changed the text


def test_the_three_position_options_differ_and_generated_leaves_the_first_token(llama, tok):
    iv = rand_iv(llama, "vector", 1, 0)
    outs = {p: generate_ids(llama, tok, PROMPTS, iv, 4.0, max_new_tokens=NEW, positions=p)[1]
            for p in ("all", "prompt", "generated")}
    prompt_ids, plain = generate_ids(llama, tok, PROMPTS, max_new_tokens=NEW)
    first = prompt_ids.shape[1]
    assert torch.equal(outs["generated"][:, first], plain[:, first])  # predicted from the prompt
    assert not torch.equal(outs["all"], outs["prompt"]) and not torch.equal(outs["all"], outs["generated"])


def test_per_row_multipliers_equal_one_prompt_at_a_time(llama, tok):
    comp = compose((rand_iv(llama, "lora", 2, 1), 1.0), (rand_iv(llama, "vector", 1, 2), 0.5))
    batched = sp.generate(llama, tok, PROMPTS, comp, multiplier=[2.0, -3.0], max_new_tokens=NEW)
    alone = [sp.generate(llama, tok, p, comp, multiplier=m, max_new_tokens=NEW)[0]
             for p, m in zip(PROMPTS, (2.0, -3.0))]
    assert batched == alone


def test_a_string_is_one_prompt_and_bad_prompts_are_refused(llama, tok):
    out = sp.generate(llama, tok, "Hello", max_new_tokens=3)
    assert isinstance(out, list) and len(out) == 1
    assert sp.generate(llama, tok, ("Hello",), max_new_tokens=3) == out
    with pytest.raises(sp.SplitPluginError, match="no prompts"):
        sp.generate(llama, tok, [])
    with pytest.raises(sp.SplitPluginError, match="must be a string"):
        sp.generate(llama, tok, ["ok", 3])
    with pytest.raises(sp.SplitPluginError, match="string or a list"):
        sp.generate(llama, tok, 42)
    iv = rand_iv(llama, "vector", 1, 0)
    with pytest.raises(sp.SplitPluginError, match="3 multipliers for 2 prompts"):
        sp.generate(llama, tok, PROMPTS, iv, multiplier=[1.0, 2.0, 3.0])
    with pytest.raises(sp.SplitPluginError, match="positions must be one of"):
        sp.generate(llama, tok, "Hi", iv, positions="answer")
    with pytest.raises(sp.SplitPluginError, match="finite"):
        sp.generate(llama, tok, "Hi", iv, multiplier=float("inf"))


def test_generate_removes_its_hooks(llama, tok):
    iv = rand_iv(llama, "vector", 1, 0)
    sp.generate(llama, tok, "Hi", iv, multiplier=5.0, max_new_tokens=2, positions="prompt")
    assert not llama._forward_pre_hooks and not llama.model.layers[1]._forward_hooks
