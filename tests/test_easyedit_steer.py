"""split_plugin.easyedit2: the field mapping and errors (no steer needed), and registry + applier
on a tiny llama inside EasyEdit2's own model wrapper (needs SPLIT_PLUGIN_EASYEDIT_CHECKOUT, an
EasyEdit checkout holding steer/, and its deps; skipped otherwise)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from split_plugin import Intervention, SplitPluginError
from split_plugin.easyedit2 import dataset_pairs, train_config

SPLIT = dict(alg_name="split_plugin_split")


def test_framework_fields_map_onto_train_config():
    config = train_config(dict(SPLIT, n_epochs=3, gradient_accumulation_steps=2, margin_penalty_weight=6.0,
                               margin_threshold=0.4, intervention_method="lora", low_rank_dimension=2, lora_alpha=8.0,
                               steering_factors=[0.5, 1.0], preference_pairs=["orig_add"], output_length=64,
                               use_chat_template=True, system_prompt="", seed=7, device="cpu",
                               split_plugin={"kl_weight": 0.25}), layer=3)
    assert (config.layer, config.method, config.form, config.rank, config.alpha) == (3, "split", "lora", 2, 8.0)
    assert (config.epochs, config.grad_accum, config.margin_weight, config.margin) == (3, 2, 6.0, 0.4)
    assert config.factors == [0.5, 1.0] and config.sub_rows is False and config.max_length == 64
    assert config.prompt_format == "chat" and config.system_prompt is None and config.seed == 7
    assert config.kl_weight == 0.25


def test_unset_fields_keep_our_defaults_and_methods_follow_alg_name():
    config = train_config(dict(alg_name="split_plugin_reps", lr=None), layer=1)
    assert config.method == "reps" and config.lr == 0.08 and config.prompt_format == "plain"
    assert train_config(dict(alg_name="split_plugin_caa"), layer=0).method == "caa"


@pytest.mark.parametrize("values, needle", [
    (dict(alg_name="spilt"), "not one of ours"),
    (dict(SPLIT, intervention_components="attn"), "intervention_components='attn'"),
    (dict(SPLIT, intervention_type="clamping"), "intervention_type='clamping'"),
    (dict(SPLIT, preference_pairs=["orig_sub"]), "preference_pairs=['orig_sub']"),
    (dict(SPLIT, split_plugin={"n_epochs": 2}), "unknown key(s) ['n_epochs']"),
    (dict(SPLIT, lr=0.1, split_plugin={"lr": 0.2}), "['lr'] set twice"),
    (dict(SPLIT, split_plugin=[1]), "must be a mapping"),
])
def test_settings_we_cannot_honour_are_named(values, needle):
    with pytest.raises(SplitPluginError) as err:
        train_config(values, layer=0)
    assert needle in str(err.value)


def test_dataset_items_become_pairs_and_bad_items_are_named():
    pairs = dataset_pairs([{"question": "q?", "matching": "yes", "not_matching": "no", "concept": "c"}])
    assert (pairs[0].question, pairs[0].positive, pairs[0].negative, pairs[0].concept) == ("q?", "yes", "no", "c")
    with pytest.raises(SplitPluginError, match=r"item 1: no string \['question'\]"):
        dataset_pairs([{"question": "q", "matching": "a", "not_matching": "b"}, {"matching": "a", "not_matching": "b"}])
    with pytest.raises(SplitPluginError, match="multi-concept"):
        dataset_pairs([(0, [{"question": "q"}])], "axbench")


def test_importing_the_adapter_imports_neither_host():
    code = "import sys, split_plugin.easyedit2; print('steer' in sys.modules, 'easyeditor' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_without_steer_register_says_how_to_get_it(monkeypatch):
    import split_plugin.easyedit2 as se2
    from split_plugin.easyedit2 import host

    monkeypatch.setitem(sys.modules, "steer", None)  # an import of steer now fails as if absent
    with pytest.raises(SplitPluginError, match="requirements-easyedit-steer.txt"):
        se2.register()
    assert host.INSTALL_HINT in str(pytest.raises(SplitPluginError, host.registries).value)


# -- inside the framework (needs a checkout) ------------------------------------------------------------
CHECKOUT = os.environ.get("SPLIT_PLUGIN_EASYEDIT_CHECKOUT")
needs_steer = pytest.mark.skipif(not CHECKOUT or not os.path.isdir(os.path.join(CHECKOUT or "", "steer")),
                                 reason="set SPLIT_PLUGIN_EASYEDIT_CHECKOUT to an EasyEdit checkout with steer/")


@pytest.fixture(scope="module")
def framework():
    sys.path.insert(0, CHECKOUT)
    pytest.importorskip("omegaconf", reason="steer/ needs omegaconf (requirements-easyedit-steer.txt)")
    import split_plugin.easyedit2 as se2
    se2.register(repair=True)
    return se2


@pytest.fixture
def wrapped(framework, tmp_path, llama, tok):
    from steer.models.get_model import get_model

    folder = tmp_path / "tiny-llama"  # the framework picks its wrapper by the name
    llama.save_pretrained(folder)
    tok.save_pretrained(folder)
    hparams = framework.registered_class("split_plugin_split", "apply")(model_name_or_path=str(folder), layers=[1],
                                                                       multipliers=[3.0], device="cpu")
    wrapper, _ = get_model(hparams)
    return wrapper, hparams


@needs_steer
def test_registered_once_with_framework_hparams(framework):
    from steer.utils.alg_dict import HYPERPARAMS_CLASS_DICT, METHODS_CLASS_DICT

    assert framework.register() == sorted(framework.METHODS)  # idempotent
    assert METHODS_CLASS_DICT["split_plugin_split"] == {"train": framework.generate, "apply": framework.apply}
    fields = HYPERPARAMS_CLASS_DICT["split_plugin_sft"]["train"].__dataclass_fields__
    assert {"n_epochs", "split_plugin", "model_name_or_path", "steer_vector_output_dir"} <= set(fields)


@needs_steer
@pytest.mark.parametrize("form", ["vector", "lora", "local_weight"])
def test_applier_slot_equals_our_hooks(framework, wrapped, llama, form):
    wrapper, hparams = wrapped
    intervention = Intervention.for_model(llama, form, 1, rank=2)
    with torch.no_grad():
        for parameter in intervention.parameters():
            parameter.normal_(0, 0.3)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    framework.apply(hparams, wrapper, {"layer_1": intervention})
    with torch.no_grad():
        steered = wrapper.model(input_ids=ids).logits
        with intervention.steer(llama, 3.0):
            direct = llama(input_ids=ids).logits
        base = llama(input_ids=ids).logits
    assert (steered - base).abs().max() > 1e-3
    torch.testing.assert_close(steered, direct, atol=1e-5, rtol=0)
    assert framework.remove(wrapper, "split_plugin_split") == 1
    with torch.no_grad():
        torch.testing.assert_close(wrapper.model(input_ids=ids).logits, base, atol=1e-6, rtol=0)


@needs_steer
def test_applier_refuses_mismatched_multipliers_and_missing_folders(framework, wrapped, tmp_path):
    wrapper, hparams = wrapped
    hparams.multipliers = [1.0, 2.0]
    with pytest.raises(SplitPluginError, match="same length"):
        framework.apply(hparams, wrapper)
    hparams.multipliers, hparams.steer_vector_load_dir = [1.0], None
    with pytest.raises(SplitPluginError, match="steer_vector_load_dir"):
        framework.apply(hparams, wrapper)
