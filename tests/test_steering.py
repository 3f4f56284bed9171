"""Applying interventions: the per-model registry, stacking, refusals, and nn.Module.apply."""
import pytest
import torch
from tiny import FOREIGN, assert_intact, randomized, snapshot, tiny_model, user_model
from torch import nn

from split_plugin import Intervention, SplitPluginError
from split_plugin.errors import AlreadyAppliedError
from split_plugin.safety import hooked_modules

LAYER = 1


def vector(model, seed):
    iv = Intervention.for_model(model, "vector", LAYER)
    with torch.no_grad():
        iv.vector.copy_(torch.randn(iv.vector.shape, generator=torch.Generator().manual_seed(seed)))
    return iv


def ids():
    return torch.randint(4, 100, (2, 6), generator=torch.Generator().manual_seed(0))


def logits(model, x):
    with torch.no_grad():
        return model(input_ids=x).logits


def test_container_apply_is_nn_module_apply():
    """`Intervention.apply` used to shadow nn.Module.apply: `container.apply(init)` broke."""
    iv = Intervention.for_model(tiny_model("llama"), "local_weight", LAYER)
    seen = []
    container = nn.ModuleDict({"iv": iv})
    assert container.apply(seen.append) is container
    assert iv in seen and iv.drop in seen
    with pytest.raises(SplitPluginError, match=r"now intervention.steer\(model, multiplier=...\)"):
        iv.apply(tiny_model("llama"), 1.0)


def test_double_steer_is_refused_not_stacked():
    model = tiny_model("llama")
    iv = vector(model, 0)
    x = ids()
    with iv.steer(model, 2.0):
        once = logits(model, x)
        with pytest.raises(AlreadyAppliedError, match=r"already steering this model \(multiplier 2.0\)"):
            iv.steer(model, 2.0)
        assert torch.equal(logits(model, x), once)
    assert hooked_modules(model) == [] and "_split_plugin_active" not in model.__dict__


def test_different_interventions_stack_each_with_its_own_multiplier():
    model = tiny_model("llama")
    a, b = vector(model, 0), vector(model, 1)
    both = Intervention.for_model(model, "vector", LAYER)
    with torch.no_grad():
        both.vector.copy_(2.0 * a.vector - 0.5 * b.vector)
    x = ids()
    with both.steer(model, 1.0):
        want = logits(model, x)
    with a.steer(model, 2.0), b.steer(model, -0.5) as handle:
        assert torch.allclose(logits(model, x), want, atol=1e-5)
        handle.multiplier = 0.0
        with a.steer(tiny_model("llama"), 1.0):  # the same intervention on another model is fine
            pass
        with both.steer(model, 2.0):
            pass
    assert hooked_modules(model) == []


def test_steer_while_folded_and_fold_while_steering_are_refused():
    model = tiny_model("llama")
    iv = vector(model, 0)
    iv.fold(model, 1.0)
    with pytest.raises(AlreadyAppliedError, match="already folded"):
        iv.steer(model, 1.0)
    iv.unfold(model)
    with iv.steer(model, 1.0):
        with pytest.raises(AlreadyAppliedError, match="already steering"):
            iv.fold(model, 1.0)


def test_fold_state_is_not_keyed_by_id(monkeypatch):
    """Python reuses id() after garbage collection; two models sharing one must stay apart."""
    import split_plugin.intervention as intervention_module
    import split_plugin.steering as steering_module

    for module in (intervention_module, steering_module):  # every model now has the same id()
        monkeypatch.setattr(module, "id", lambda obj: 0, raising=False)
    first, second = tiny_model("llama"), tiny_model("llama", seed=1)
    iv = Intervention.for_model(first, "local_weight", LAYER)
    with torch.no_grad():
        iv.delta_weight.fill_(0.1)
    saved = [m.model.layers[LAYER].mlp.down_proj.weight.detach().clone() for m in (first, second)]
    iv.fold(first, 1.0)
    with pytest.raises(SplitPluginError, match="not folded into this model"):
        iv.unfold(second)
    iv.fold(second, 1.0)
    iv.unfold(second)
    iv.unfold(first)
    for model, weight in zip((first, second), saved):
        assert torch.equal(model.model.layers[LAYER].mlp.down_proj.weight, weight)


def test_steering_does_not_copy_the_intervention_every_forward():
    model = tiny_model("llama").to(torch.float64)
    iv = vector(model, 0)
    model.to("meta")
    with iv.steer(model, 1.0):
        logits(model, ids().to("meta"))
        moved = iv.vector
        logits(model, ids().to("meta"))
    assert iv.vector.device.type == "meta" and iv.vector is moved and iv.vector.dtype == torch.float32


# -- refusals before any hook: bad multipliers, another model, a fold that dies half-way -----------
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "2", None, [1.0], torch.tensor([True])])
def test_bad_multiplier_is_refused_before_any_hook(bad):
    model = user_model()
    snap = snapshot(model)
    iv = randomized(model, "local_weight")
    with pytest.raises(SplitPluginError, match="multiplier must be a finite number"):
        iv.steer(model, bad)
    with pytest.raises(SplitPluginError, match="fold takes one finite number as the multiplier"):
        iv.fold(model, bad)
    with pytest.raises(SplitPluginError, match="fold takes one finite number"):
        iv.fold(model, torch.ones(3))
    assert_intact(model, snap)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("source, target, form, message", FOREIGN)
def test_intervention_for_another_model_apply_and_fold(source, target, form, message):
    iv = randomized(tiny_model(source), form)
    model = user_model(target)
    snap = snapshot(model)
    with pytest.raises(SplitPluginError, match=message):
        iv.steer(model, 1.0)
    with pytest.raises(SplitPluginError, match=message):
        iv.fold(model, 1.0)
    assert_intact(model, snap)


@pytest.mark.usefixtures("one_thread")
def test_intervention_for_another_layer_count():
    iv = randomized(tiny_model("llama"), "vector", layer=3)
    model = user_model()
    del model.model.layers[3]
    snap = snapshot(model)
    for call in (lambda: iv.steer(model), lambda: iv.fold(model)):
        with pytest.raises(SplitPluginError, match="layer 3 is out of range: this llama model has 3 decoder"):
            call()
    assert_intact(model, snap)


@pytest.mark.usefixtures("one_thread")
def test_type_check_can_be_overridden_when_the_weights_are_the_same():
    iv = randomized(tiny_model("llama"), "vector")
    model = tiny_model("gpt_neox")
    iv.config.model_type = "gpt_neox"
    with iv.steer(model, 1.0):
        pass
    assert hooked_modules(model) == []


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_fold_failing_half_way_restores_the_layer(monkeypatch, arch):
    model = user_model(arch)
    snap = snapshot(model)
    iv = randomized(model, "local_weight")

    def dies(self):
        raise KeyboardInterrupt  # after the weight was written, before the bias

    monkeypatch.setattr(Intervention, "delta_bias_vector", dies)
    with pytest.raises(KeyboardInterrupt):
        iv.fold(model, 1.5)
    monkeypatch.undo()
    assert_intact(model, snap)
    with pytest.raises(SplitPluginError, match="not folded"):
        iv.unfold(model)
    iv.fold(model, 1.5)  # and a later fold works and undoes exactly
    iv.unfold(model)
    assert_intact(model, snap)
