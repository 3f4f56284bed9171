"""Leading tokens every row shares run once per multiplier: same log-probs, less work."""
import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from split_plugin import ContrastivePair, Intervention, encode_pairs, resolve_layout
from split_plugin import shared_prefix
from split_plugin.forward import capture_prefix, stacked_index
from split_plugin.packing import pack_pairs
from split_plugin.scoring import answer_logprobs

PAIRS = [ContrastivePair(f"Is statement {i} something you would say?", "yes", "no no") for i in range(4)]
SYSTEM = "You are a helpful assistant that answers."


def packed_setup(arch: str, form: str):
    model, tok = tiny_model(arch), tiny_tokenizer()
    enc = encode_pairs(tok, PAIRS, system_prompt=SYSTEM)
    batch = pack_pairs(enc, torch.float32)
    layout = resolve_layout(model)
    intervention = Intervention.for_model(model, form, 2, rank=4)
    with torch.no_grad():
        for p in intervention.parameters():
            p.normal_(0, 0.3)
    return model, layout, batch, intervention, capture_prefix(layout, 2, batch.input_ids, batch.attention_mask,
                                                              batch.position_ids)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma", "gemma2", "phi3", "gpt_neox", "gpt2"])
@pytest.mark.parametrize("form", ["vector", "lora", "local_weight"])
def test_shared_prefix_gives_the_full_rows_log_probs(arch, form, monkeypatch):
    model, layout, batch, intervention, prefix = packed_setup(arch, form)
    recorded = []
    record = shared_prefix.record
    monkeypatch.setattr(shared_prefix, "record", lambda *a: recorded.append(a[2:]) or record(*a))
    k = 3
    multiplier = torch.tensor([0.0, 1.0, -2.0]).repeat_interleave(batch.batch_size)
    index = stacked_index(batch.batch_size, k)
    with torch.no_grad():
        got, want = (answer_logprobs(model, batch, intervention=intervention, multiplier=multiplier, index=index,
                                     layout=layout, prefix=prefix, share_prefix=share) for share in (True, False))
    assert torch.allclose(got, want, atol=1e-5)
    length = shared_prefix.common_length(batch.input_ids, int(batch.positions.min()))
    assert length >= shared_prefix.MIN_SHARED  # the system turn and the user header
    # gpt2's layers take positional arguments: scored in full; the others record k rows once
    assert recorded == ([] if arch == "gpt2" else [(length, k)])


def test_prefix_is_not_shared_when_most_rows_have_their_own_multiplier(monkeypatch):
    model, layout, batch, intervention, prefix = packed_setup("llama", "vector")
    monkeypatch.setattr(shared_prefix, "record", lambda *a: pytest.fail("nothing to share"))
    with torch.no_grad():
        answer_logprobs(model, batch, intervention=intervention, multiplier=torch.tensor([1.0, 2.0, 3.0, 4.0]),
                        layout=layout, prefix=prefix, share_prefix=True)


def test_common_length_stops_at_the_first_difference_and_before_the_first_scored_token():
    ids = torch.tensor([[1] * 10 + [2, 3], [1] * 10 + [4, 3]])
    assert shared_prefix.common_length(ids, first_scored=11) == 10
    assert shared_prefix.common_length(ids, first_scored=9) == 9
    assert shared_prefix.common_length(ids, first_scored=5) == 0  # too short to be worth a pass
    assert shared_prefix.common_length(ids[:1], first_scored=11) == 0  # one row: nothing shared
