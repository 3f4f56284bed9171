"""Composition equals applying the terms one after the other; arithmetic equals the summed update."""
import pytest
import torch

import split_plugin as sp
from split_plugin.composition import compose
from tiny import tiny_model

IDS = torch.tensor([[5, 17, 33, 9, 60, 41], [8, 21, 70, 3, 44, 19]])


def rand_iv(model, form, layer, seed, rank=3):
    torch.manual_seed(seed)
    iv = sp.Intervention.for_model(model, form, layer, rank=rank if form == "lora" else None)
    with torch.no_grad():
        for p in iv.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return iv


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.fixture
def parts(llama):
    return (rand_iv(llama, "vector", 1, 0), rand_iv(llama, "lora", 1, 1),
            rand_iv(llama, "local_weight", 3, 2), rand_iv(llama, "vector", 2, 3))


def test_composing_equals_applying_one_after_the_other(llama, parts):
    a, b, c, d = parts
    ms = (2.0, -1.5, 0.7, 3.0)
    with compose(*zip(parts, ms)).steer(llama):
        composed = logits(llama)
    with a.steer(llama, ms[0]), b.steer(llama, ms[1]), c.steer(llama, ms[2]), d.steer(llama, ms[3]):
        nested = logits(llama)
    torch.testing.assert_close(composed, nested, rtol=0, atol=0)
    assert (composed - logits(llama)).abs().max() > 1e-2  # hooks removed, and they did something


def test_folding_a_composition_equals_its_hooks_and_unfolds_exactly(llama, parts):
    _, b, c, d = parts  # the vector at layer 1 and lora at layer 1 share a down projection
    comp = compose((parts[0], 2.0), (b, -1.5), (c, 0.7), (d, 3.0))
    before = {k: v.clone() for k, v in llama.state_dict().items()}
    with comp.steer(llama):
        hooked = logits(llama)
    comp.fold(llama)
    folded = logits(llama)
    comp.unfold(llama)
    torch.testing.assert_close(folded, hooked, rtol=1e-5, atol=1e-5)
    after = llama.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_a_failing_fold_undoes_the_terms_already_folded(parts):
    gemma = tiny_model("gemma2")
    ok = rand_iv(gemma, "local_weight", 1, 0)
    bad = rand_iv(gemma, "vector", 2, 1)  # a post-MLP norm: the vector cannot fold
    before = {k: v.clone() for k, v in gemma.state_dict().items()}
    with pytest.raises(sp.SplitPluginError, match="cannot be folded"):
        compose(ok, bad).fold(gemma)
    after = gemma.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("form", ["vector", "lora", "local_weight"])
def test_arithmetic_equals_the_summed_update(llama, form):
    a, b = rand_iv(llama, form, 2, 5), rand_iv(llama, form, 2, 6)
    with compose((a, 1.5), (b, 1.5)).steer(llama):
        both = logits(llama)
    with (a + b).steer(llama, 1.5):
        summed = logits(llama)
    torch.testing.assert_close(summed, both, rtol=1e-5, atol=1e-5)
    with compose((a, 1.0), (b, -1.0)).steer(llama):
        diff_hooks = logits(llama)
    with (a - b).steer(llama, 1.0):
        diff = logits(llama)
    torch.testing.assert_close(diff, diff_hooks, rtol=1e-5, atol=1e-5)
    with a.steer(llama, -2.0):
        expected = logits(llama)
    for scaled in (2 * -a, -a * 2, a * -2.0):
        with scaled.steer(llama, 1.0):
            torch.testing.assert_close(logits(llama), expected, rtol=1e-5, atol=1e-5)
    assert (a + b).form == form and (a + b).layer == 2
    if form == "lora":
        assert (a + b).config.rank == 6


def test_arithmetic_and_compose_refuse_bad_input(llama):
    a, b = rand_iv(llama, "vector", 1, 0), rand_iv(llama, "vector", 2, 1)
    with pytest.raises(sp.SplitPluginError, match="one form and layer"):
        a + b
    with pytest.raises(sp.SplitPluginError, match="one form and layer"):
        a + rand_iv(llama, "local_weight", 1, 2)
    with pytest.raises(sp.SplitPluginError, match="finite number"):
        a * float("nan")
    with pytest.raises(TypeError):
        a + 1.0
    with pytest.raises(sp.SplitPluginError, match="appears twice"):
        compose(a, (a, 2.0))
    with pytest.raises(sp.SplitPluginError, match="at least one"):
        compose()
    with pytest.raises(sp.SplitPluginError, match="intervention, multiplier"):
        compose("a")
