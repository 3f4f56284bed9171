"""The one scoring kernel: selected rows, per-row multipliers, cached prefix, packed rows."""
import torch
from tiny import tiny_model, tiny_tokenizer

from split_plugin import ContrastivePair, Intervention, encode_pairs, resolve_layout
from split_plugin.packing import pack_pairs
from split_plugin.forward import capture_prefix
from split_plugin.scoring import ScoringBatch, answer_logprobs

PAIRS = [ContrastivePair(f"Question {i}?", f"yes {i}", f"no, not {i}") for i in range(3)]


def setup(form="lora"):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    iv = Intervention.for_model(model, form, 1, rank=2 if form == "lora" else None)
    with torch.no_grad():
        for p in iv.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.3)
    enc = encode_pairs(tok, PAIRS)
    return model, iv, ScoringBatch.plain(enc.input_ids, enc.attention_mask, enc.labels), enc


@torch.no_grad()
def test_selected_rows_at_their_own_multipliers_equal_separate_runs():
    model, iv, batch, _ = setup()
    layout = resolve_layout(model)
    index = torch.tensor([4, 0, 0, 3])
    ms = torch.tensor([1.5, -2.0, 0.0, 0.5])
    prefix = capture_prefix(layout, 1, batch.input_ids, batch.attention_mask)
    fast = answer_logprobs(model, batch, intervention=iv, multiplier=ms, index=index,
                           layout=layout, prefix=prefix)
    full = answer_logprobs(model, batch, intervention=iv, multiplier=ms, index=index)
    for j, (row, m) in enumerate(zip(index.tolist(), ms.tolist())):
        alone = answer_logprobs(model, batch, intervention=iv, multiplier=m)[row]
        assert torch.allclose(fast[j], alone, atol=1e-5) and torch.allclose(full[j], alone, atol=1e-5)


@torch.no_grad()
def test_packed_rows_score_what_plain_rows_score_and_select_by_index():
    model, iv, batch, enc = setup("vector")
    packed = pack_pairs(enc, torch.float32)
    plain = answer_logprobs(model, batch, intervention=iv, multiplier=2.0)
    assert torch.allclose(answer_logprobs(model, packed, intervention=iv, multiplier=2.0), plain, atol=1e-4)
    # packed row 2 holds output rows 4, 5 (pair 2); selecting it first puts them first
    picked = answer_logprobs(model, packed, intervention=iv, multiplier=2.0, index=torch.tensor([2, 0]))
    assert torch.allclose(picked, plain[[4, 5, 0, 1]], atol=1e-4)

