"""The EasyEdit adapter: registration, hyperparameters, edits through BaseEditor, restore paths,
log-odds metrics, and version detection against small fakes of the two host versions.

The installed host is the PyPI wheel in CI (its code hard-codes cuda devices, so edits run
inside `cpu_fallback()`); the git version's differences are exercised through fakes here and
checked for real by examples/check_git_host.py against an EasyEdit checkout (docs/EASYEDIT.md).
"""
from __future__ import annotations

import dataclasses
import enum
import math
import os
import subprocess
import sys
import textwrap
import types
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from split_plugin.errors import SplitPluginError
from split_plugin.safety import hooked_modules
from tiny import assert_intact, snapshot, tiny_model, tiny_tokenizer, user_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.easyedit

try:
    import split_plugin.easyedit as se
    from split_plugin.easyedit import apply as se_apply
    from split_plugin.easyedit import metrics as se_metrics

    HOST_ERROR = None
except (ImportError, SplitPluginError) as exc:  # the host or one of its dependencies is missing
    se = se_apply = se_metrics = None
    HOST_ERROR = f"easyeditor is not importable: {exc}"
    if os.environ.get("SPLIT_PLUGIN_REQUIRE_EASYEDIT") == "1":  # set by `make test`: CI must test the host
        raise RuntimeError(f"{HOST_ERROR}; `make install` should have installed it") from exc

needs_host = pytest.mark.skipif(se is None, reason=HOST_ERROR or "")

REQUESTS = dict(prompts=["Is the sky green?", "Say hi"], target_new=["Yes", "hi"], ground_truth=["No", "bye"])
FAST = dict(epochs=3, train_batch_size=2, factors=[1.0, 2.0], multiplier=2.0, lr=0.05, layer=2)


# -- helpers ------------------------------------------------------------------------------------------
def write_yaml(path: Path, **values) -> Path:
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def host_edit(editor, restore: bool, **kwargs):
    """BaseEditor.edit with keywords only; `restore` = the host undoes the edit afterwards."""
    if se.host_info().flavor == "wheel":
        return editor.edit(keep_original_weight=restore, verbose=False, **kwargs)
    if "ground_truth" in kwargs and "target_neg" not in kwargs:
        kwargs["target_neg"] = kwargs["ground_truth"]
    return editor.edit(sequential_edit=not restore, verbose=False, **kwargs)


def probe(model):
    with torch.no_grad():
        return model(input_ids=torch.tensor([[5, 6, 7, 8, 9, 10]])).logits.clone()


def flags(model):
    return [p.requires_grad for p in model.parameters()], [m.training for m in model.modules()]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny llama saved where BaseEditor's substring rule ("llama") loads it itself."""
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def host(tmp_path, monkeypatch):
    """The host's code on this CPU-only machine: cuda devices redirected, logs in tmp_path."""
    monkeypatch.chdir(tmp_path)  # BaseEditor writes ./logs/run.log
    with se.cpu_fallback():
        yield tmp_path


@pytest.fixture
def tiny_hparams(tmp_path, tiny_dir):
    def make(**overrides):
        values = dict(alg_name="SPLIT", model_name=str(tiny_dir), device=0, **FAST)
        values.update(overrides)
        return se.SPLITHyperParams.from_hparams(write_yaml(tmp_path / "tiny.yaml", **values))
    return make


@pytest.fixture
def editor_for():
    from easyeditor import BaseEditor

    return BaseEditor.from_hparams


# -- importing and registering ----------------------------------------------------------------------------
def test_importing_split_plugin_does_not_import_easyeditor():
    code = "import split_plugin, sys; assert 'easyeditor' not in sys.modules, 'easyeditor was imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@needs_host
def test_register_is_idempotent_and_mutates_the_same_dict():
    alg_dict = sys.modules["easyeditor.util.alg_dict"]
    editor_module = sys.modules["easyeditor.editors.editor"]
    registry = alg_dict.ALG_DICT
    before = dict(registry)
    info = se.register()
    se.register()
    assert alg_dict.ALG_DICT is registry and editor_module.ALG_DICT is registry
    assert registry["SPLIT"] is se.apply_split_to_model
    assert {k: v for k, v in registry.items() if k != "SPLIT"} == {k: v for k, v in before.items() if k != "SPLIT"}
    batch = sys.modules["easyeditor.editors.batch_editor"].BatchEditor
    assert batch.is_batchable_method("SPLIT") and batch.is_batchable_method("FT")
    assert not batch.is_batchable_method("ROME")
    original = batch.is_batchable_method.__split_plugin_original__
    assert getattr(original, "__split_plugin_original__", None) is None  # wrapped once
    wrapped = editor_module.compute_edit_quality
    assert getattr(wrapped.__split_plugin_wrapped__, "__split_plugin_wrapped__", None) is None
    assert info.flavor in ("wheel", "git")


# -- hyperparameters --------------------------------------------------------------------------------------
@needs_host
@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "gemma-2-9b-it", "qwen2.5-7b-it", "gpt2"])
def test_shipped_yamls_load_by_name_without_loading_models(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # by name, from any folder
    assert name in se.shipped_configs()
    hp = se.SPLITHyperParams.from_hparams(name)
    assert hp.alg_name == "SPLIT" and hp.request_format == "host"
    wheel = se.host_info().flavor == "wheel"  # the wheel takes only an index (cpu_fallback redirects it)
    assert hp.device == (0 if torch.cuda.is_available() or wheel else "cpu")  # device: auto
    config = hp.to_train_config()
    assert config.layer == hp.layer and config.batch_size == hp.train_batch_size
    if isinstance(hp.model_name, se.PreloadedModel):
        assert not hp.model_name.loaded  # loading waits for BaseEditor
    expected = {"gemma-2-9b-it": 20, "qwen2.5-7b-it": 14}
    if name in expected:
        assert hp.layer == expected[name]


@needs_host
def test_every_train_config_field_is_a_hyperparameter():
    from dataclasses import fields

    from split_plugin.config import TrainConfig
    from split_plugin.easyedit.hparams import NOT_MAPPED, RENAMED

    ours = {f.name for f in fields(se.SPLITHyperParams)}
    for f in fields(TrainConfig):
        if f.name not in NOT_MAPPED:
            assert RENAMED.get(f.name, f.name) in ours, f.name
    host_fields = {"alg_name", "model_name", "device", "model_parallel", "max_length", "batch_size"}
    assert host_fields <= ours


@needs_host
def test_hparams_map_to_a_train_config(tmp_path, tiny_dir):
    hp = se.SPLITHyperParams.from_hparams(write_yaml(
        tmp_path / "h.yaml", alg_name="SPLIT", model_name=str(tiny_dir), layer=1, train_batch_size=3,
        train_max_length=64, lr="1e-3", factors=[1, 2, 3]))
    config = hp.to_train_config(device="cpu")
    assert (config.batch_size, config.max_length, config.lr, config.factors) == (3, 64, 1e-3, [1.0, 2.0, 3.0])
    assert hp.batch_size == 1 and hp.max_length == 40  # the host's own semantics
    assert hp.resolved_multiplier() == 2.0  # the median of the factors when not given
    assert se.SPLITHyperParams.from_hparams(tmp_path / "h").layer == 1  # ".yaml" appended as the host does


@needs_host
@pytest.mark.parametrize("values, expected", [
    (dict(layers=[3]), "unknown key(s) ['layers']"),
    (dict(train_batch_size="four"), "train_batch_size='four'"),
    (dict(alg_name="ROME"), "alg_name must be 'SPLIT'"),
    (dict(epochs=0), "epochs must be positive"),
    (dict(train_batch_size=0), "train_batch_size must be positive"),
    (dict(form="dense"), "form 'dense' is not one of"),
    (dict(model_loader="magic"), "model_loader must be one of"),
])
def test_bad_hyperparameters_give_one_clear_error(tmp_path, tiny_dir, values, expected):
    data = dict(alg_name="SPLIT", model_name=str(tiny_dir), layer=1)
    data.update(values)
    with pytest.raises(SplitPluginError) as info:
        se.SPLITHyperParams.from_hparams(write_yaml(tmp_path / "bad.yaml", **data))
    assert expected in str(info.value)
    if "unknown" in expected:
        assert "valid keys are" in str(info.value) and "train_batch_size" in str(info.value)


@needs_host
def test_yaml_syntax_error_and_missing_keys(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("alg_name: SPLIT\nlayer: [1\n", encoding="utf-8")
    with pytest.raises(SplitPluginError, match="not valid YAML at line"):
        se.SPLITHyperParams.from_hparams(bad)
    with pytest.raises(SplitPluginError, match=r"missing required key\(s\) \['model_name'\]"):
        se.SPLITHyperParams.from_hparams(write_yaml(tmp_path / "m.yaml", alg_name="SPLIT", layer=1))
    with pytest.raises(SplitPluginError, match="did you mean 'train_batch_size' for 'train_batch'"):
        se.SPLITHyperParams.from_dict(dict(alg_name="SPLIT", model_name="x-llama", layer=1, train_batch=1))
    with pytest.raises(SplitPluginError, match="no such hyperparameter file"):
        se.SPLITHyperParams.from_hparams(tmp_path / "absent.yaml")


@needs_host
def test_model_names_the_host_cannot_load_are_preloaded(tiny_dir):
    hp = se.SPLITHyperParams(model_name="google/gemma-2-9b-it", layer=1)
    assert isinstance(hp.model_name, se.PreloadedModel) and str(hp.model_name) == "google/gemma-2-9b-it"
    hp = se.SPLITHyperParams(model_name=str(tiny_dir), layer=1)
    assert type(hp.model_name) is str  # "llama" in the path: BaseEditor loads it
    model, tok = tiny_model("llama"), tiny_tokenizer()
    hp = hp.with_model(model, tok)
    assert list(hp.model_name) == [model, tok] and hp.model_name.lower() == "llama"
    assert dataclasses.replace(hp).model_name.load()[0] is model


# -- edits through BaseEditor ---------------------------------------------------------------------------
@needs_host
def test_edit_adds_our_metrics_and_restores_bit_exact(host, tiny_hparams, editor_for):
    editor = editor_for(tiny_hparams())
    before, state = probe(editor.model), flags(editor.model)
    metrics, model, weights_copy = host_edit(editor, restore=True, **REQUESTS)
    assert len(metrics) == 2
    for case in metrics:
        for phase in ("pre", "post"):
            assert set(se.METRIC_KEYS) <= set(case[phase]), case[phase]
        assert "rewrite_acc" in case["post"]
        assert case["pre"]["pref_log_odds"] != case["post"]["pref_log_odds"]
    assert torch.equal(probe(editor.model), before)
    assert hooked_modules(editor.model) == [] and flags(editor.model) == state
    assert isinstance(weights_copy, se.SplitWeightsCopy) and not weights_copy.active
    summary = se.summarize(metrics, print_table=False)
    assert set(se.METRIC_KEYS) <= set(summary["post"]) and summary["cases"] == 2


@needs_host
def test_edit_persists_without_keep_original_weight(host, tiny_hparams, editor_for):
    editor = editor_for(tiny_hparams())
    before = probe(editor.model)
    _, model, weights_copy = host_edit(editor, restore=False, prompts="Is the sky green?",
                                       target_new="Yes", ground_truth="No")
    assert weights_copy.active and hooked_modules(editor.model)
    assert not torch.equal(probe(editor.model), before)
    assert se.active_edits(editor.model) == [weights_copy]
    weights_copy()  # the git version's restore call; also works for the wheel
    assert torch.equal(probe(editor.model), before) and not se.active_edits(editor.model)


@needs_host
def test_batch_edit_trains_one_intervention_on_all_requests(host, tiny_hparams, editor_for, monkeypatch):
    calls = []
    real = se_apply.train
    monkeypatch.setattr(se_apply, "train", lambda m, t, pairs, c, **k: calls.append(pairs) or real(m, t, pairs, c, **k))
    editor = editor_for(tiny_hparams(batch_size=2))
    before = probe(editor.model)
    if se.host_info().flavor == "wheel":
        metrics, _, _ = editor.batch_edit(keep_original_weight=True, verbose=False, **REQUESTS)
    else:
        metrics, _, _ = editor.batch_edit(verbose=False, target_neg=REQUESTS["ground_truth"], **REQUESTS)
    assert [len(p) for p in calls] == [2]
    assert [p.negative for p in calls[0]] == ["No", "bye"]
    assert all(set(se.METRIC_KEYS) <= set(m["post"]) for m in metrics)
    assert torch.equal(probe(editor.model), before)


@needs_host
def test_missing_negative_warns_once_and_trains_the_utility_term_only(host, tiny_hparams, editor_for, monkeypatch):
    configs = []
    real = se_apply.train
    monkeypatch.setattr(se_apply, "train", lambda m, t, p, c, **k: configs.append(c) or real(m, t, p, c, **k))
    editor = editor_for(tiny_hparams())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's default: once per call site and message
        metrics, _, _ = host_edit(editor, restore=True, prompts=REQUESTS["prompts"], target_new=REQUESTS["target_new"])
    ours = [w for w in caught if "no negative answer" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert "utility term only" in str(ours[0].message)
    assert len(configs) == 2
    assert all(c.neg_weight == 0 and c.margin_weight == 0 and not c.sub_rows for c in configs)
    post = metrics[0]["post"]
    assert math.isnan(post["pref_log_odds"]) and math.isnan(post["pref_acc"]) and math.isfinite(post["util_log_odds"])


@needs_host
def test_layer_out_of_range_is_one_clear_error_and_leaves_the_model_alone(host, tiny_hparams, editor_for):
    editor = editor_for(tiny_hparams(layer=9))
    before, state = probe(editor.model), flags(editor.model)
    with pytest.raises(SplitPluginError, match=r"layer 9 is out of range: .* 4 decoder layers, so use a layer in 0..3"):
        host_edit(editor, restore=True, prompts="Is the sky green?", target_new="Yes", ground_truth="No")
    assert hooked_modules(editor.model) == [] and flags(editor.model) == state
    assert torch.equal(probe(editor.model), before)


class _Weird(nn.Module):
    """A causal LM whose layout split_plugin cannot find (no decoder layer list)."""

    def __init__(self):
        super().__init__()
        self.config = types.SimpleNamespace(model_type="weird", is_encoder_decoder=False)
        self.embed = nn.Embedding(128, 16)
        self.head = nn.Linear(16, 128)

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return types.SimpleNamespace(logits=self.head(self.embed(input_ids)))


@needs_host
def test_unsupported_model_gives_the_layout_error(host, tiny_hparams, editor_for):
    model = _Weird()
    editor = editor_for(tiny_hparams().with_model(model, tiny_tokenizer(), name="weird"))
    assert editor.model is model
    with pytest.raises(SplitPluginError, match="cannot find the decoder layers of this model"):
        host_edit(editor, restore=True, prompts="Is the sky green?", target_new="Yes", ground_truth="No")
    assert hooked_modules(model) == []


@needs_host
def test_training_failure_leaves_model_and_tokenizer_untouched(tiny_hparams, monkeypatch):
    model, tok = tiny_model("llama"), tiny_tokenizer(padding_side="left")
    model.train()
    model.lm_head.weight.requires_grad_(False)
    state = flags(model)

    def explode(*args, **kwargs):
        raise SplitPluginError("boom")

    monkeypatch.setattr(se_apply, "train", explode)
    with pytest.raises(SplitPluginError, match="boom"):
        se.apply_split_to_model(model, tok, [{"prompt": "q", "target_new": "a", "ground_truth": "b"}],
                                tiny_hparams())
    assert flags(model) == state and hooked_modules(model) == [] and tok.padding_side == "left"


@needs_host
def test_apply_copy_and_the_two_restore_paths(tiny_hparams):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    before = probe(model)
    request = {"prompt": "Is the sky green?", "target_new": "Yes", "target_neg": "No", "ground_truth": "Maybe"}
    edited, wc = se.apply_split_to_model(model, tok, [request], tiny_hparams(), copy=True)
    assert edited is not model and hooked_modules(model) == [] and hooked_modules(edited)
    wc()
    # the wheel: items() is the restore path; it undoes the edit only with keep_original_weight
    for keep in (False, True):
        _, wc = se.apply_split_to_model(model, tok, [request], tiny_hparams(), keep_original_weight=keep)
        assert list(wc.items()) == []  # nothing to write back into parameters
        assert wc.active is (not keep)
        wc()
    assert torch.equal(probe(model), before)
    pairs, missing = se.requests_to_pairs([request, {"prompt": "p", "target_new": "t", "ground_truth": "<|endoftext|>"}])
    assert pairs[0].negative == "No" and missing == [1]


# -- metrics for any method -----------------------------------------------------------------------------------
FT_HPARAMS = dict(
    layers=[1], num_steps=2, lr=5e-3, weight_decay=0.0, kl_factor=0.0, norm_constraint=False,
    rewrite_module_tmp="model.layers.{}.mlp.down_proj.weight", layer_module_tmp="model.layers.{}",
    mlp_module_tmp="model.layers.{}.mlp", attn_module_tmp="model.layers.{}.self_attn",
    ln_f_module="model.norm", lm_head_module="lm_head", device=0, alg_name="FT", batch_size=1,
    max_length=40)


@needs_host
def test_log_odds_metrics_for_another_method(host, tiny_dir, editor_for):
    from easyeditor import FTHyperParams

    fields = {f.name for f in dataclasses.fields(FTHyperParams)}
    hparams = FTHyperParams(model_name=str(tiny_dir), **{k: v for k, v in FT_HPARAMS.items() if k in fields},
                            **({"objective_optimization": "prompt_last"} if "objective_optimization" in fields else {}))
    editor = editor_for(hparams)
    metrics, _, _ = host_edit(editor, restore=True, prompts="Is the sky green?", target_new="Yes",
                              ground_truth="No", rephrase_prompts="Is the sky colored green?",
                              locality_inputs={"nq": {"prompt": ["Say hi"], "ground_truth": ["hi"]}})
    wanted = set(se.METRIC_KEYS) | {"rephrase_pref_log_odds", "locality_log_odds", "locality_pref_acc"}
    assert wanted <= set(metrics[0]["pre"]) and wanted <= set(metrics[0]["post"])


@needs_host
def test_add_log_odds_metrics_after_the_fact_and_summaries():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    metrics = [{"requested_rewrite": {"prompt": "Is the sky green?", "target_new": "Yes", "ground_truth": "No"},
                "post": {"rewrite_acc": [0.5], "locality": {"nq_acc": [1.0, 0.0]}}},
               {"requested_rewrite": {"prompt": "Hi", "target_new": "Hello"}, "post": {"rewrite_acc": [1.0]}}]
    se.add_log_odds_metrics(metrics, model, tok)
    first = metrics[0]["post"]
    assert first["pref_acc"] == float(first["pref_log_odds"] > 0)
    assert math.isnan(metrics[1]["post"]["pref_log_odds"])
    summary = se.summarize(metrics, print_table=False)
    assert summary["post"]["rewrite_acc"] == 0.75 and summary["post"]["locality.nq_acc"] == 0.5
    assert summary["post"]["pref_log_odds"] == pytest.approx(first["pref_log_odds"])  # NaN skipped
    table = se.format_table({"FT": summary, "SPLIT": summary})
    assert "pref_log_odds" in table and table.count("\n") == 3


@needs_host
def test_cpu_fallback_redirects_cuda_devices():
    with se.cpu_fallback(force=True) as active:
        assert active
        assert torch.zeros(2, device="cuda:0").device.type == "cpu"
        assert torch.ones(2).to("cuda:1").device.type == "cpu"
        assert torch.ones(2).to(0).device.type == "cpu"
        assert nn.Linear(2, 2).to(torch.device("cuda", 0)).weight.device.type == "cpu"
        assert torch.ones(2).cuda().device.type == "cpu"


# -- version detection and registration against fakes ---------------------------------------------------------
def _fake_host(flavor: str, restore_set: bool = True):
    """Small fakes of the host's modules: the registry, the editor module, BatchEditor, utils."""
    alg_dict = types.SimpleNamespace(ALG_DICT={"FT": object()})

    class BatchEditor(enum.Enum):
        FT = "FT"

        @staticmethod
        def is_batchable_method(alg_name: str):
            return alg_name == BatchEditor.FT.value

    if flavor == "wheel":
        def edit(self, prompts, target_new, ground_truth=None, rephrase_prompts=None, locality_inputs=None,
                 portability_inputs=None, keep_original_weight=False, verbose=True, **kwargs):
            pass
        utils = None
    else:
        def edit(self, prompts, target_new, ground_truth=None, target_neg=None, rephrase_prompts=None,
                 locality_inputs=None, portability_inputs=None, sequential_edit=False, verbose=True, **kwargs):
            pass
        utils = types.SimpleNamespace(CALLABLE_RESTORE_ALGS={"KN"}) if restore_set else types.SimpleNamespace()

    editor = types.SimpleNamespace(
        BaseEditor=type("BaseEditor", (), {"edit": edit}), ALG_DICT=alg_dict.ALG_DICT,
        compute_edit_quality=lambda model, model_name, hparams, tok, record, device, *a, **k: {"rewrite_acc": [1.0]},
        __file__="fake/editor.py")
    if flavor == "git":
        editor.summary_metrics = lambda all_metrics: None
    return se.HostModules(alg_dict=alg_dict, editor=editor, batch_editor=BatchEditor, utils=utils)


@needs_host
@pytest.mark.parametrize("flavor", ["wheel", "git"])
def test_detection_and_registration_with_fake_hosts(flavor):
    fake = _fake_host(flavor)
    registry = fake.alg_dict.ALG_DICT
    info = se.register(fake)
    se.register(fake)
    assert info.flavor == flavor and fake.alg_dict.ALG_DICT is registry
    assert registry["SPLIT"] is se.apply_split_to_model and "FT" in registry
    assert fake.batch_editor.is_batchable_method("SPLIT") and fake.batch_editor.is_batchable_method("FT")
    assert not fake.batch_editor.is_batchable_method("ROME")
    assert getattr(fake.batch_editor.is_batchable_method.__split_plugin_original__, "__split_plugin_original__",
                   None) is None
    if flavor == "git":
        assert info.takes_target_neg and info.restore == "callable"
        assert fake.utils.CALLABLE_RESTORE_ALGS == {"KN", "SPLIT"}
        assert "qwen2" in info.model_keywords
    else:
        assert not info.takes_target_neg and info.restore == "items" and info.callable_restore_algs is None
        assert "qwen2" not in info.model_keywords
    assert not hasattr(fake.editor.compute_edit_quality, "__split_plugin_wrapped__")  # fakes' evaluation untouched


@needs_host
def test_unknown_host_versions_are_refused():
    fake = _fake_host("wheel")
    fake.editor.BaseEditor = type("BaseEditor", (), {"edit": lambda self, prompts, target_new: None})
    with pytest.raises(SplitPluginError, match="unsupported easyeditor version"):
        se.detect_host(fake)
    with pytest.raises(SplitPluginError, match="no mutable CALLABLE_RESTORE_ALGS"):
        se.detect_host(_fake_host("git", restore_set=False))


@needs_host
def test_restore_paths_as_each_host_version_runs_them(tiny_hparams):
    """The wheel writes weights_copy.items() back; git calls weights_copy() for CALLABLE_RESTORE_ALGS."""
    model, tok = tiny_model("llama"), tiny_tokenizer()
    before = probe(model)
    request = {"prompt": "Is the sky green?", "target_new": "Yes", "ground_truth": "No"}

    def wheel_restore(weights_copy):
        with torch.no_grad():
            for k, v in weights_copy.items():
                dict(model.named_parameters())[k][...] = v

    def git_restore(weights_copy, callable_algs=frozenset({"SPLIT"})):
        if "SPLIT" in callable_algs:
            weights_copy()
        else:
            wheel_restore(weights_copy)

    _, wc = se.apply_split_to_model(model, tok, [request], tiny_hparams(), keep_original_weight=True)
    wheel_restore(wc)
    assert torch.equal(probe(model), before)
    _, wc = se.apply_split_to_model(model, tok, [request], tiny_hparams(), keep_original_weight=False)
    git_restore(wc)  # git passes keep_original_weight=False and restores by calling
    assert torch.equal(probe(model), before) and hooked_modules(model) == []


def test_tolerant_import_stubs_only_multimodal_failures(tmp_path, monkeypatch):
    from split_plugin.easyedit._host import _TolerantFinder, tolerant_import

    pkg = tmp_path / "fakehost_pkg"
    (pkg / "vision").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .vision import Processor\nfrom . import core\n")
    (pkg / "vision" / "__init__.py").write_text(
        "X = 1\nimport not_installed_vision_pkg_xyz\nclass Processor: pass\n")
    (pkg / "core.py").write_text("VALUE = 42\n")
    (pkg / "broken.py").write_text("import not_installed_text_pkg_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    finder = _TolerantFinder(prefix="fakehost_pkg.", packages=frozenset({"not_installed_vision_pkg_xyz"}),
                             modules=())
    try:
        with tolerant_import(finder):
            import fakehost_pkg
            assert fakehost_pkg.core.VALUE == 42
            vision = sys.modules["fakehost_pkg.vision"]
            assert vision.X == 1 and vision.__split_plugin_stub__ == "not_installed_vision_pkg_xyz"
            with pytest.raises(ModuleNotFoundError, match="not_installed_vision_pkg_xyz"):
                fakehost_pkg.Processor()
            with pytest.raises(ModuleNotFoundError, match="not_installed_text_pkg_xyz"):
                import fakehost_pkg.broken  # noqa: F401  (not multimodal: a real error)
    finally:
        for name in [n for n in sys.modules if n.startswith("fakehost_pkg")]:
            del sys.modules[name]


def test_tolerant_import_stubs_other_methods_that_fail(tmp_path, monkeypatch):
    """The git host's UnKE imports a module transformers 5 lacks, DeepEdit-API an API client:
    only those methods are lost; a failure outside the method modules stays an error."""
    from split_plugin.easyedit._host import _TolerantFinder, tolerant_import

    pkg = tmp_path / "fakehost2_pkg"
    (pkg / "models" / "unke").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import models\n")
    (pkg / "models" / "__init__.py").write_text("from .unke import *\nfrom . import api\n")
    (pkg / "models" / "unke" / "__init__.py").write_text("from .unke_main import apply_unke\n")
    (pkg / "models" / "unke" / "unke_main.py").write_text("from json.no_such_module_xyz import Mask\n")
    (pkg / "models" / "api.py").write_text("from not_installed_api_client_xyz import Client\n")
    (pkg / "evaluate.py").write_text("import not_installed_metric_pkg_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    finder = _TolerantFinder(prefix="fakehost2_pkg.", packages=frozenset(), modules=(),
                             methods=("fakehost2_pkg.models.",))
    try:
        with tolerant_import(finder):
            import fakehost2_pkg
            assert set(finder.skipped) == {"fakehost2_pkg.models.unke.unke_main", "fakehost2_pkg.models.api"}
            assert "json.no_such_module_xyz" in finder.skipped["fakehost2_pkg.models.unke.unke_main"]
            with pytest.raises(ModuleNotFoundError, match="apply_unke is unavailable: importing it failed here"):
                fakehost2_pkg.models.apply_unke()
            with pytest.raises(ModuleNotFoundError, match="not_installed_metric_pkg_xyz"):
                import fakehost2_pkg.evaluate  # noqa: F401  (not another method's code: a real error)
    finally:
        for name in [n for n in sys.modules if n.startswith("fakehost2_pkg")]:
            del sys.modules[name]


# -- the embedded model -----------------------------------------------------------------------------------
@needs_host
@pytest.mark.slow
def test_embedded_model_through_base_editor(host, editor_for):
    data = yaml.safe_load((se.hparams.CONFIG_DIR / "smollm2-135m-instruct.yaml").read_text())
    data.update(epochs=3)
    hp = se.SPLITHyperParams.from_hparams(write_yaml(host / "smol.yaml", **data))
    editor = editor_for(hp)
    assert type(editor.model).__name__ == "LlamaForCausalLM"
    ids = editor.tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = editor.model(input_ids=ids).logits.clone()
    metrics, _, wc = host_edit(editor, restore=True, prompts="What is the capital of France?",
                               target_new="Rome", ground_truth="Paris")
    assert set(se.METRIC_KEYS) <= set(metrics[0]["post"])
    assert metrics[0]["post"]["pref_log_odds"] > metrics[0]["pre"]["pref_log_odds"]
    with torch.no_grad():
        assert torch.equal(editor.model(input_ids=ids).logits, before)


@pytest.mark.easyedit
@pytest.mark.usefixtures("one_thread")
def test_easyedit_bad_hparams_and_requests_leave_the_model_intact(tmp_path):
    model, tok = user_model(), tiny_tokenizer()
    snap = snapshot(model)
    path = tmp_path / "split.yaml"
    for text, message in [("alg_name: SPLIT\nlayer: [1\n", "not valid YAML at line"),
                          ("alg_name: SPLIT\nmodel_name: x\nlayer: 1\nlearning_rate: 1\n", "unknown key"),
                          ("alg_name: SPLIT\nmodel_name: x\nlayer: one\n", "wrong type for layer='one'")]:
        path.write_text(text)
        with pytest.raises(SplitPluginError, match=message):
            se.SPLITHyperParams.from_hparams(path)
    hparams = se.SPLITHyperParams.from_dict(
        {"alg_name": "SPLIT", "model_name": se.preloaded(model, tok), "layer": 2, "epochs": 1,
         "factors": [1.0], "multiplier": 1.0})
    good = {"prompt": "Do you like tea?", "target_new": "Yes", "ground_truth": "No"}
    for requests, message in [([], "got no requests"),
                              ([{"prompt": "q"}], "needs a non-empty 'prompt' and 'target_new'"),
                              (["q"], "must be a dict"),
                              ([{**good, "ground_truth": "Yes"}], "identical")]:
        with pytest.raises(SplitPluginError, match=message):
            se.apply_split_to_model(model, tok, requests, hparams)
    bad_layer = __import__("dataclasses").replace(hparams, layer=7)
    with pytest.raises(SplitPluginError, match="layer 7 is out of range: this llama model has 4"):
        se.apply_split_to_model(model, tok, [good], bad_layer)
    assert_intact(model, snap)
