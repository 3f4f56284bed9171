"""Every shipped YAML loads; bad YAML gets one clear message."""
from pathlib import Path

import pytest
import torch
from tiny import PAIRS, assert_intact, snapshot, tiny_tokenizer, user_model

from split_plugin import SplitPluginError
from split_plugin.config import TrainConfig
from split_plugin.trainer import train

HPARAMS = Path(__file__).resolve().parent.parent / "hparams"
# explicit depths: rglob would not follow the hparams/smollm2-135m-instruct link into the package
TRAIN_YAMLS = sorted(p for pattern in ("*/*.yaml", "*/*/*.yaml") for p in HPARAMS.glob(pattern)
                     if "SPLIT" not in p.parts)


def test_there_are_yamls_for_the_paper_models_and_the_embedded_one():
    names = {p.relative_to(HPARAMS).parts[0] for p in TRAIN_YAMLS}
    assert {"gemma-2-9b-it", "qwen2.5-7b-it", "smollm2-135m-instruct", "gpt2"} <= names


@pytest.mark.parametrize("path", TRAIN_YAMLS, ids=lambda p: str(p.relative_to(HPARAMS)))
def test_every_training_yaml_loads(path):
    config = TrainConfig.from_yaml(path)
    assert config.layer >= 0 and config.method in path.stem


@pytest.mark.parametrize("text, message", [
    ("layer: [1\n", "not valid YAML at line"),
    ("- a\n- b\n", "must hold a mapping"),
    ("layer: 3\nlearning_rate: 0.1\n", r"unknown key\(s\) \['learning_rate'\].*valid keys are"),
    ("layer: three\n", "wrong type for layer='three' \\(expected int\\)"),
    ("method: split\n", r"missing required key\(s\) \['layer'\]"),
    ("layer: 3\nform: prefix\n", "form 'prefix' is not one of"),
    ("layer: 3\nfactors: []\n", "factors must be a non-empty list"),
    ("layer: 3\nfactors: [1.0, .nan]\n", "factors must be a non-empty list of finite"),
    ("layer: 3\nmethod: caa\nform: lora\n", "caa makes a vector"),
    ("layer: 3\nlr: 1e-3\n", None),
])
def test_bad_yaml_messages(tmp_path, text, message):
    path = tmp_path / "h.yaml"
    path.write_text(text)
    if message is None:
        assert TrainConfig.from_yaml(path).lr == pytest.approx(1e-3)
        return
    with pytest.raises(SplitPluginError, match=message):
        TrainConfig.from_yaml(path)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(SplitPluginError, match="no such hyperparameter file"):
        TrainConfig.from_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"\xff\xfe\x00layer")
    with pytest.raises(SplitPluginError):
        TrainConfig.from_yaml(bad)


@pytest.mark.parametrize("form, factors", [("vector", [2.0, 20.0]), ("lora", [0.2, 2.0]),
                                           ("local_weight", [0.2, 2.0])])
def test_unset_factors_are_the_forms_own(form, factors):
    """`train(..., {"form": "lora"})` used to train a LoRA at the vector strengths 2..20."""
    config = TrainConfig.from_dict({"layer": 1, "form": form})
    assert [config.factors[0], config.factors[-1]] == factors and len(config.factors) == 10
    assert TrainConfig(layer=1, form=form, factors=[3]).factors == [3.0]


def test_digest_names_the_settings_that_differ_from_the_defaults():
    from split_plugin.config import TrainConfig as Config

    base = Config(layer=3)
    assert base.digest() == Config(layer=3, factors=list(base.factors)).digest()  # the form's own factors
    assert base.digest() == Config.from_dict(base.to_dict()).digest()
    assert base.digest() != Config(layer=3, margin=0.4).digest() != Config(layer=4).digest()
    assert len(Config(layer=3).digest(8)) == 8


# -- bad YAML through train(): one SplitPluginError, and the model is left as it was ----------------
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("text, message", [
    ("layer: [2\n", r"not valid YAML at line 2"),
    ("layer: 2\nlearning_rate: 0.1\n", r"unknown key\(s\) \['learning_rate'\].*valid keys are"),
    ("layer: 2\n1: a\nfoo: b\n", r"unknown key\(s\) \[1, 'foo'\]"),          # mixed key types
    ("layer: two\n", r"wrong type for layer='two' \(expected int\)"),
    ("layer: !!float x\n", r"not valid YAML: ValueError"),                     # a YAML tag that cannot convert
    ("layer: " + "[" * 3000 + "]" * 3000 + "\n", r"not valid YAML|layer=\[\[\[\[.*expected int"),  # libyaml parses it
    ("epochs: 1\n", r"missing required key\(s\) \['layer'\]"),
    ("layer: 9\n", r"layer 9 is out of range: this llama model has 4 decoder layers, so use a layer in 0..3"),
    ("layer: 2\nform: prefix\n", r"form 'prefix' is not one of \('vector', 'lora', 'local_weight'\)"),
    ("layer: 2\nform: lora\nrank: 0\n", r"rank must be a positive integer, got 0"),
    ("layer: 2\nform: lora\nrank: 33\n", r"lora rank must be an integer in 1..32 .*48x32\), got 33"),
    ("layer: 2\nform: lora\nalpha: 0\n", r"alpha must be a finite number > 0"),
    ("layer: 2\nform: lora\nalpha: '1e400'\n", r"alpha must be a finite number > 0.*got inf"),
    ("layer: 2\nreps_gamma: .nan\n", r"reps_gamma must be a finite number"),
    ("layer: 2\ncheckpoint_every: -1\n", r"checkpoint_every must be >= 0, got -1"),
    ("layer: 2\ncache_limit_mb: -5\n", r"cache_limit_mb must be >= 0, got -5"),
    ("layer: 2\ndevice: gpu\n", r"device 'gpu' is not a device name; use cpu, cuda"),
    ("layer: 2\ndevice: cuda\n", r"CUDA is not available on this machine; set device: cpu"),
    ("layer: 2\nkl_weight: 1.0\nkl_text: /no/such/text.txt\n", r"kl_text '/no/such/text.txt' is not a file"),
], ids=lambda value: value.splitlines()[0][:40] if isinstance(value, str) and "\n" in value else None)
def test_bad_training_yaml_through_train(tmp_path, text, message):
    if "cuda" in text and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    path = tmp_path / "h.yaml"
    path.write_text(text, encoding="utf-8")
    model = user_model()
    snap = snapshot(model)
    with pytest.raises(SplitPluginError, match=message):
        train(model, tiny_tokenizer(), PAIRS, path)
    assert_intact(model, snap)
