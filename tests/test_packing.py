"""Packing both answers of a pair into one row: layout, positions, mask, and when it refuses."""
import torch
from tiny import tiny_tokenizer

from split_plugin import ContrastivePair, encode_pairs
from split_plugin.packing import pack_pairs

PAIRS = [ContrastivePair("Why?", "yes", "no no"), ContrastivePair("How so?", "ok", "nope")]


def test_a_packed_row_is_prompt_positive_negative_with_restarted_positions():
    enc = encode_pairs(tiny_tokenizer(), PAIRS)
    packed = pack_pairs(enc, torch.float32)
    assert packed.batch_size == 2 and packed.output_rows == 4
    p, a, b = int(enc.prompt_lengths[0]), int(enc.answer_lengths[0]), int(enc.answer_lengths[1])
    row0 = enc.input_ids[0][enc.attention_mask[0].bool()]
    row1 = enc.input_ids[1][enc.attention_mask[1].bool()]
    assert torch.equal(packed.input_ids[0, :p + a + b], torch.cat([row0, row1[p:]]))
    assert packed.position_ids[0, p + a].item() == p  # the negative answer restarts after the prompt
    mask = packed.attention_mask[0, 0]
    assert mask[p + a, p] < 0 and mask[p + a, p - 1] == 0  # negative sees the prompt, not the positive
    assert packed.tokens.counts.tolist() == [int(c) for c in enc.answer_lengths]


def test_rows_that_do_not_share_a_prompt_or_do_not_fit_are_not_packed():
    enc = encode_pairs(tiny_tokenizer(), PAIRS)
    swapped = [1, 0, 2, 3]  # the same pair, answers swapped: still one prompt
    mixed = torch.tensor([0, 2, 1, 3])  # rows 0 and 1 come from different questions
    assert pack_pairs(enc.select(mixed), torch.float32) is None
    assert pack_pairs(enc, torch.float32, max_length=4) is None
    assert pack_pairs(enc.select(swapped), torch.float32) is not None


def test_left_padded_pairs_pack_like_right_padded_ones():
    tok = tiny_tokenizer()
    right = pack_pairs(encode_pairs(tok, PAIRS, padding_side="right"), torch.float32)
    left = pack_pairs(encode_pairs(tok, PAIRS, padding_side="left"), torch.float32)
    for name in ("input_ids", "attention_mask", "position_ids", "rows", "positions"):
        assert torch.equal(getattr(left, name), getattr(right, name)), name
