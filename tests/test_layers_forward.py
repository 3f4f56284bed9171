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


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("form, layer", [("vector", 1), ("vector", 3), ("lora", 1), ("lora", 3)])
def test_skipped_work_changes_no_read_logit_or_gradient(arch, form, layer):
    """Layer L replayed from its cached output (vector form) and the top MLP run at read positions
    only: the read logits and the intervention's gradients equal a plain hooked full forward's."""
    model = tiny_model(arch)
    layout = resolve_layout(model)
    iv = Intervention.for_model(model, form, layer, rank=2 if form == "lora" else None)
    with torch.no_grad():
        for p in iv.parameters():
            p.normal_(0, 0.3)
    ids = torch.randint(4, 100, (3, 12), generator=torch.Generator().manual_seed(0))
    ids[:, :8] = ids[0, :8]  # a shared start, run once in the prefix
    mask = torch.ones_like(ids)
    mask[0, 10:] = 0
    rows, pos = torch.tensor([0, 0, 4, 5]), torch.tensor([9, 9, 2, 11])  # a position read twice
    ms = torch.tensor([1.5] * 3 + [-2.0] * 3)
    if arch == "opt" and form == "lora":
        ms = 1.5  # OPT flattens rows before its MLP, so per-row multipliers cannot reach the down projection
    weights = torch.randn(4, model.config.vocab_size, generator=torch.Generator().manual_seed(1))
    first, mlp = layout.layer(layer), layout.mlp(3)
    separate = mlp is not layout.layer(3)  # OPT's MLP is not a module of its own: nothing to skip
    calls, widths = [], []
    first.forward = lambda *a, _f=first.forward, **k: calls.append(1) or _f(*a, **k)
    if separate:
        mlp.forward = lambda x, *a, _f=mlp.forward, **k: widths.append(x.shape[:-1].numel()) or _f(x, *a, **k)
    with iv.steer(model, multiplier=ms):
        prefix = capture_prefix(layout, layer, ids, mask)  # captured with the hooks in place
        calls.clear(), widths.clear()  # count the suffix only
        assert (prefix.output is not None) == (form == "vector")
        fast = run_suffix(layout, prefix, stacked_index(3, 2), rows=rows, positions=pos)
        fast_grads = torch.autograd.grad((fast * weights).sum(), list(iv.parameters()))
        del first.forward
        if separate:
            del mlp.forward
        plain = model(input_ids=ids.repeat(2, 1), attention_mask=mask.repeat(2, 1)).logits[rows, pos]
        plain_grads = torch.autograd.grad((plain * weights).sum(), list(iv.parameters()))
    assert torch.allclose(fast, plain, atol=1e-5)
    for got, want in zip(fast_grads, plain_grads):
        assert torch.allclose(got, want, atol=1e-5)
    # the vector form adds to layer L's output, so layer L does not run; the lora form edits inside it
    assert len(calls) == (0 if form == "vector" else 1)
    if separate:
        # the top MLP runs on the 3 distinct read positions; it runs on all where the lora edit
        # hooks inside it, and not at all where the top layer is the replayed layer L
        want = {("vector", 3): [], ("lora", 3): [6 * 12]}.get((form, layer), [3])
        assert widths == want


@pytest.mark.parametrize("arch", ARCHS)
def test_leading_tokens_all_rows_share_run_once_in_the_prefix(arch):
    """A common start (a chat template's system turn) runs once for all rows below layer L; the
    cached states and the logits above equal the plain full forward's."""
    model = tiny_model(arch)
    layout = resolve_layout(model)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 100, (3, 16), generator=gen)
    ids[:, :10] = torch.randint(4, 100, (10,), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 13:] = 0  # right padding on one row
    widths = []
    first = layout.layer(0)
    first.forward = lambda h, *a, _f=first.forward, **k: widths.append(h.shape[1]) or _f(h, *a, **k)
    with torch.no_grad():
        prefix = capture_prefix(layout, 2, ids, mask)
        del first.forward
        states = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        logits = run_suffix(layout, prefix)
    real = mask.bool()
    assert torch.allclose(prefix.hidden[real], states.hidden_states[2][real], atol=1e-5)
    assert torch.allclose(logits[real], states.logits[real], atol=1e-5)
    shared = widths == [10, 6]
    assert shared or widths == [16]
    # every architecture whose layers take a 4D mask and a cache slot shares it (GPT-2's blocks
    # take their mask another way, so they run the whole rows)
    assert shared == (arch != "gpt2")
