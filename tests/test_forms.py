"""The FormContract: every form on every tiny architecture keeps the same promises."""
import pytest
import torch
from tiny import ARCH_CONFIGS, tiny_model

from split_plugin import FORMS, Intervention, SplitPluginError
from split_plugin.errors import AlreadyAppliedError, PerRowMultiplierError
from split_plugin.forms import REGISTRY, Form, get_form

ARCHS = sorted(ARCH_CONFIGS)
LAYER = 2


def randomized(model, form, seed=1):
    iv = Intervention.for_model(model, form, LAYER, rank=3 if form == "lora" else None)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in iv.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return iv


def ids(batch=3, length=7, device="cpu"):
    return torch.randint(4, 100, (batch, length), generator=torch.Generator().manual_seed(0)).to(device)


def logits(model, x):
    with torch.no_grad():
        return model(input_ids=x).logits


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("form", FORMS)
def test_form_contract(arch, form, tmp_path):
    model = tiny_model(arch)
    iv = randomized(model, form)
    x = ids()
    with iv.steer(model, multiplier=1.3):
        hooked = logits(model, x)

    # round trip: saved and loaded, it steers the same
    iv.save_pretrained(str(tmp_path))
    back = Intervention.from_pretrained(str(tmp_path))
    with back.steer(model, multiplier=1.3):
        assert torch.equal(logits(model, x), hooked)

    # fold == hook (or a clear refusal where a norm follows the down projection)
    try:
        iv.fold(model, 1.3)
    except SplitPluginError as exc:
        assert form == "vector" and "follows the down projection" in str(exc)
    else:
        assert torch.allclose(logits(model, x), hooked, atol=1e-5)
        with pytest.raises(AlreadyAppliedError, match="already folded"):
            iv.steer(model, 1.0)
        iv.unfold(model)

    # per-row multipliers == separate runs (or a typed refusal where rows are flattened: OPT)
    ms = torch.tensor([-2.0, 0.0, 0.5])
    try:
        with iv.steer(model, multiplier=ms):
            batched = logits(model, x)
    except PerRowMultiplierError:
        assert arch == "opt" and get_form(form).reads_input
    else:
        for row, m in enumerate(ms.tolist()):
            with iv.steer(model, multiplier=m):
                assert torch.allclose(batched[row], logits(model, x[row:row + 1])[0], atol=1e-5)

    # a double apply is refused, and the first application still acts alone
    with iv.steer(model, multiplier=1.3):
        with pytest.raises(AlreadyAppliedError, match="already steering this model"):
            iv.steer(model, multiplier=1.3)
        assert torch.equal(logits(model, x), hooked)

    # the intervention follows model.to(...) (meta: a device every CPU machine has)
    if arch != "gpt2":  # GPT-2's forward calls .item(), which meta tensors cannot
        model.to("meta")
        with iv.steer(model, multiplier=1.3):
            assert logits(model, ids(device="meta")).device.type == "meta"
        assert all(p.device.type == "meta" for p in iv.parameters())


def test_registry_names_every_form_and_each_states_its_formula():
    assert FORMS == tuple(REGISTRY) == ("vector", "lora", "local_weight")
    for name, form in REGISTRY.items():
        assert isinstance(form, Form) and form.name == name
        assert "m" in type(form).__doc__ and form.hook in ("layer", "down_proj")
        assert all(f > 0 for f in form.factors)
    with pytest.raises(SplitPluginError, match="not one of"):
        get_form("prefix")
