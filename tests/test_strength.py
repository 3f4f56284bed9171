"""Matched strengths: the edit ratio against the formula computed by hand."""
import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from split_plugin import Intervention
from split_plugin.data import encode_texts as _encode_texts
from split_plugin.strength import edit_ratio, matched_multipliers

TEXT = "Plain prose about the weather and the sea, for the edit norm."


@pytest.mark.parametrize("form", ["vector", "lora", "local_weight"])
def test_edit_ratio_is_median_update_norm_over_median_state_norm(form):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    iv = Intervention.for_model(model, form, 1, rank=2 if form == "lora" else None)
    with torch.no_grad():
        for p in iv.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    ids, mask, _ = _encode_texts(tok, [TEXT], max_length=128)
    seen = {}
    layer, proj = model.model.layers[1], model.model.layers[1].mlp.down_proj
    hooks = [layer.register_forward_hook(lambda m, a, out: seen.__setitem__("h", out[0] if isinstance(out, tuple) else out)),
             proj.register_forward_hook(lambda m, a, out: seen.__setitem__("x", a[0]))]
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    real = mask.bool()
    h, x = seen["h"][real], seen["x"][real]
    if form == "vector":
        delta = iv.vector.expand_as(h)
    elif form == "lora":
        delta = x @ iv.lora_A @ iv.lora_B * iv.config.scaling
    else:
        delta = x @ iv.delta_weight + iv.delta_bias
    want = float(delta.norm(dim=-1).median() / h.norm(dim=-1).median())
    assert edit_ratio(model, tok, iv, TEXT) == pytest.approx(want, rel=1e-5)


def test_matched_multipliers_scale_targets_and_keep_signs():
    assert matched_multipliers(0.5, [-0.1, 0.2]) == pytest.approx([-0.2, 0.4])
    assert matched_multipliers(0.0, [0.1, 0.2]) == [0.0, 0.0]
