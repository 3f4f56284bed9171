"""The unified update against the formula written by hand on the layer, for every form."""
import pytest
import torch
from tiny import ARCH_CONFIGS, tiny_model

from split_plugin import FORMS, Intervention, SplitPluginError, resolve_layout

ARCHS = sorted(ARCH_CONFIGS)
LAYER = 2


def randomize(iv: Intervention, seed: int = 1, scale: float = 0.5) -> Intervention:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in iv.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return iv


def make(model, form, seed=1):
    return randomize(Intervention.for_model(model, form, LAYER, rank=3 if form == "lora" else None), seed)


def ids(batch=3, length=7, seed=0):
    return torch.randint(4, 100, (batch, length), generator=torch.Generator().manual_seed(seed))


def logits(model, x, **kw):
    with torch.no_grad():
        return model(input_ids=x, **kw).logits


def expected_logits(model, iv, x, m):
    """Write the update by hand: replace the down projection's forward / add to the layer output."""
    layout = resolve_layout(model)
    if iv.form == "vector":
        layer = layout.layer(LAYER)
        h = layer.register_forward_hook(lambda mod, a, out: out + m * iv.vector)
    else:
        proj = layout.down_proj(LAYER)
        if iv.form == "lora":
            dw = (iv.lora_A @ iv.lora_B) * (iv.config.alpha / iv.config.rank)
            db = 0.0
        else:
            dw, db = iv.delta_weight, iv.delta_bias
        h = proj.register_forward_hook(lambda mod, a, out: out + m * (a[0] @ dw + db))
    try:
        return logits(model, x)
    finally:
        h.remove()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("form", FORMS)
def test_hook_equals_hand_formula(arch, form):
    model = tiny_model(arch)
    iv = make(model, form)
    x = ids()
    with iv.steer(model, multiplier=1.7):
        got = logits(model, x)
    want = expected_logits(model, iv, x, 1.7)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, logits(model, x), atol=1e-3)  # the update does something


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_zero_multiplier_and_removal_are_bit_exact(arch, form):
    model = tiny_model(arch)
    x = ids()
    before = logits(model, x)
    iv = make(model, form)
    with iv.steer(model, multiplier=0.0):
        assert torch.equal(logits(model, x), before)
    with iv.steer(model, multiplier=torch.zeros(3)):
        assert torch.equal(logits(model, x), before)
    handle = iv.steer(model, multiplier=2.0)
    assert not torch.equal(logits(model, x), before)
    handle.remove()
    handle.remove()  # idempotent
    assert torch.equal(logits(model, x), before)


@pytest.mark.parametrize("form", FORMS)
def test_per_row_multipliers_equal_separate_runs(form):
    model = tiny_model("qwen2")
    iv = make(model, form)
    x = ids(batch=4)
    ms = torch.tensor([-2.0, 0.0, 0.5, 3.0])
    with iv.steer(model, multiplier=ms):
        batched = logits(model, x)
    for row, m in enumerate(ms.tolist()):
        with iv.steer(model, multiplier=m):
            single = logits(model, x[row:row + 1])
        assert torch.allclose(batched[row], single[0], atol=1e-5)


def test_wrong_per_row_shape_is_refused():
    model = tiny_model("llama")
    iv = make(model, "vector")
    with iv.steer(model, multiplier=torch.ones(5)):
        with pytest.raises(SplitPluginError, match=r"shape \[batch\] = \[3\]"):
            logits(model, ids())


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt", "gpt_neox", "phi3", "gemma2"])
@pytest.mark.parametrize("form", FORMS)
def test_fold_equals_hook_and_unfold_is_exact(arch, form):
    model = tiny_model(arch)
    iv = make(model, form)
    x = ids()
    before = logits(model, x)
    with iv.steer(model, multiplier=1.3):
        hooked = logits(model, x)
    if form == "vector" and arch == "gemma2":
        with pytest.raises(SplitPluginError, match="post_feedforward_layernorm"):
            iv.fold(model, 1.3)
        return
    iv.fold(model, 1.3)
    assert torch.allclose(logits(model, x), hooked, atol=1e-5)
    with pytest.raises(SplitPluginError, match="already folded"):
        iv.fold(model, 1.3)
    iv.unfold(model)
    assert torch.equal(logits(model, x), before)


def test_fold_adds_bias_when_layer_has_none_and_unfold_removes_it():
    model = tiny_model("llama")
    proj = resolve_layout(model).down_proj(LAYER)
    assert proj.bias is None
    iv = make(model, "vector")
    iv.fold(model, 2.0)
    assert proj.bias is not None and torch.allclose(proj.bias, 2.0 * iv.vector)
    iv.unfold(model)
    assert proj.bias is None


def test_hooks_removed_when_forward_raises():
    model = tiny_model("llama")
    iv = make(model, "lora")
    with pytest.raises(RuntimeError, match="boom"):
        with iv.steer(model, multiplier=1.0):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(SplitPluginError):
        with iv.steer(model, multiplier=torch.ones(7)):
            logits(model, ids())
    assert all(not m._forward_hooks for m in model.modules())


def test_trainable_tensors_are_fp32_on_a_bf16_model():
    model = tiny_model("llama", dtype=torch.bfloat16)
    iv = make(model, "lora")
    assert all(p.dtype == torch.float32 for p in iv.parameters())
    with iv.steer(model, multiplier=1.0):
        out = logits(model, ids())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_lora_init_starts_at_zero_update():
    model = tiny_model("llama")
    iv = Intervention.for_model(model, "lora", LAYER, rank=4, alpha=8)
    assert iv.config.scaling == 2.0
    assert torch.count_nonzero(iv.lora_B) == 0 and torch.count_nonzero(iv.lora_A) > 0
    assert torch.count_nonzero(iv.delta_weight_matrix()) == 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(form="prefix", layer=1), "not one of"),
    (dict(form="vector", layer=9), r"out of range: this llama model has 4 decoder layers"),
    (dict(form="lora", layer=1, rank=0), "rank must be an integer in 1..32"),
    (dict(form="lora", layer=1, rank=33), "rank must be an integer in 1..32"),
])
def test_bad_construction_messages(kwargs, message):
    with pytest.raises(SplitPluginError, match=message):
        Intervention.for_model(tiny_model("llama"), **kwargs)


def test_intervention_from_another_shape_is_refused():
    iv = make(tiny_model("llama"), "local_weight")
    with pytest.raises(SplitPluginError, match="intermediate size 48.*has hidden size 32 and intermediate size 128"):
        iv.steer(tiny_model("gpt2"))


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("kwargs, message", [
    (dict(form="lora", layer=1, rank=2, alpha=0.0), "lora alpha must be a finite number > 0"),
    (dict(form="lora", layer=1, rank=2, alpha="big"), "lora alpha must be a finite number > 0"),
    (dict(form="vector", layer=1, dropout="x"), r"dropout must be a number in \[0, 1\), got 'x'"),
    (dict(form="lora", layer=1, rank=True), "lora rank must be an integer in 1..32"),
    (dict(form="local_weight", layer=True), "layer True is out of range"),
])
def test_bad_construction_through_for_model(kwargs, message):
    with pytest.raises(SplitPluginError, match=message):
        Intervention.for_model(tiny_model("llama"), **kwargs)
