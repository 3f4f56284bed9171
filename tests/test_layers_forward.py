"""Layer lookup across architectures, and the prefix cache against the plain forward."""
import pytest
import torch
from tiny import ARCH_CONFIGS, tiny_model
from torch import nn

from split_plugin import ArchSpec, Intervention, SplitPluginError, resolve_layout
from split_plugin.forward import capture_prefix, run_suffix, stacked_index
from split_plugin.layers import _guess_spec

ARCHS = sorted(ARCH_CONFIGS)


@pytest.mark.parametrize("arch", ARCHS)
def test_layout_finds_layers_and_down_projection(arch):
    model = tiny_model(arch)
    layout = resolve_layout(model)
    assert layout.num_layers == 4
    d_in, d_out = layout.down_proj_dims(1)
    assert d_out == 32 and d_in > d_out
    # the down projection really feeds the layer: zeroing it changes the logits
    x = torch.randint(4, 100, (1, 5))
    before = model(x).logits
    with torch.no_grad():
        layout.down_proj(1).weight.zero_()
    assert not torch.allclose(model(x).logits, before)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt", "gpt_neox", "phi3"])
def test_fallback_guess_agrees_with_table(arch):
    model = tiny_model(arch)
    guess = _guess_spec(model)
    table = resolve_layout(model).spec
    assert (guess.layers, guess.down_proj) == (table.layers, table.down_proj)


def test_override_and_unsupported_model_message():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.stack = nn.ModuleList([nn.Linear(4, 4)])

    with pytest.raises(SplitPluginError, match="Looked for the known types .*Pass layout="):
        resolve_layout(Odd())
    model = tiny_model("llama")
    layout = resolve_layout(model, {"layers": "model.layers", "down_proj": "mlp.down_proj",
                                    "final_norm": "model.norm"})
    assert layout.num_layers == 4
    with pytest.raises(SplitPluginError, match="valid keys are"):
        resolve_layout(model, {"layerz": "model.layers"})
    with pytest.raises(SplitPluginError, match="has no 'mlp.up'"):
        resolve_layout(model, ArchSpec(layers="model.layers", down_proj="mlp.up", final_norm=()))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layer", [0, 2, 3])
def test_prefix_suffix_equals_full_forward(arch, layer):
    model = tiny_model(arch)
    layout = resolve_layout(model)
    ids = torch.randint(4, 100, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding on one row
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits
        prefix = capture_prefix(layout, layer, ids, mask)
        assert torch.allclose(run_suffix(layout, prefix), full, atol=1e-5)
        stacked = run_suffix(layout, prefix, stacked_index(prefix.batch_size, 2))
        assert torch.allclose(stacked[3:], full, atol=1e-5)
        rows, pos = torch.tensor([0, 4, 5]), torch.tensor([8, 2, 6])
        picked = run_suffix(layout, prefix, stacked_index(3, 2), rows=rows, positions=pos)
        assert torch.allclose(picked, full[rows % 3, pos], atol=1e-5)
    assert all(type(m).__name__ != "_Recorder" for m in model.modules())


@pytest.mark.parametrize("form", ["vector", "lora", "local_weight"])
def test_suffix_with_stacked_multipliers_equals_hooked_full_forward(form):
    model = tiny_model("gemma2")
    layout = resolve_layout(model)
    iv = Intervention.for_model(model, form, 1, rank=2 if form == "lora" else None)
    with torch.no_grad():
        for p in iv.parameters():
            p.normal_()
    ids = torch.randint(4, 100, (2, 6))
    prefix = capture_prefix(layout, 1, ids)
    ms = torch.tensor([-1.0, -1.0, 2.0, 2.0])
    with torch.no_grad(), iv.steer(model, multiplier=ms):
        stacked = run_suffix(layout, prefix, stacked_index(prefix.batch_size, 2))
    for k, m in enumerate([-1.0, 2.0]):
        with torch.no_grad(), iv.steer(model, multiplier=m):
            assert torch.allclose(stacked[2 * k:2 * k + 2], model(ids).logits, atol=1e-5)


def test_capture_restores_layers_when_forward_fails():
    model = tiny_model("llama")
    layout = resolve_layout(model)
    originals = list(layout.layers)
    with pytest.raises(Exception):
        capture_prefix(layout, 1, torch.full((1, 4), 10_000))  # ids beyond the vocabulary
    assert list(layout.layers) == originals
