"""Reliability: bad input gets one clear SplitPluginError, interruptions and failures never cost
the user's model or files, corrupted files are refused, and training is reproducible.

Complements test_config / test_data / test_train / test_serialization / test_intervention /
test_models / test_analysis (which cover the basic messages); this file adds the entry points
(train, for_model, apply, fold, sweep, CLI, EasyEdit) and the failure paths.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from split_plugin import FORMS, Intervention, SplitPluginError, export_peft, resolve_layout
from split_plugin import cli, fileio, objectives, regularizers
from split_plugin import serialization as ser
from split_plugin import trainer as train_module
from split_plugin.config import TrainConfig
from split_plugin.data import ContrastivePair, load_pairs
from split_plugin.regularizers import KLPenalty
from split_plugin.safety import check_device, hooked_modules
from split_plugin.checkpoints import CHECKPOINT_NAME
from split_plugin.trainer import _Trainer, train

try:
    from split_plugin.analysis.sweeping import sweep
except Exception as exc:  # the analysis package is written alongside; its tests skip without it
    sweep, SWEEP_MISSING = None, f"split_plugin.analysis.sweeping is not importable ({exc})"
else:
    SWEEP_MISSING = ""
needs_sweep = pytest.mark.skipif(sweep is None, reason=SWEEP_MISSING or "sweep available")

PAIRS = [ContrastivePair(f"question number {i}?", "Yes" if i % 2 else "No", "No" if i % 2 else "Yes")
         for i in range(7)]
LAYER = 2
X = torch.randint(4, 100, (2, 9), generator=torch.Generator().manual_seed(0))


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def cfg(**kw):
    base = dict(layer=LAYER, epochs=1, batch_size=2, lr=0.05, factors=[1.0, 2.0], progress=False, seed=3)
    return {**base, **kw}


def randomized(model, form, layer=LAYER, seed=1, rank=3):
    iv = Intervention.for_model(model, form, layer, rank=rank if form == "lora" else None)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in iv.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return iv


def params(iv: Intervention) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in iv.named_parameters()}


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# -- the model as the user left it -----------------------------------------------------------------
def snapshot(model):
    """Everything a failure must not change: hooks, layer objects, flags, modes, weights, logits."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(X).logits.clone()
    model.train(was_training)
    return {"layers": list(resolve_layout(model).layers),
            "flags": [p.requires_grad for p in model.parameters()],
            "modes": [m.training for m in model.modules()],
            "state": {k: v.clone() for k, v in model.state_dict().items()},
            "logits": logits}


def assert_intact(model, snap) -> None:
    assert hooked_modules(model) == []
    assert not any(type(m).__name__ == "_Recorder" for m in model.modules())
    assert all(a is b for a, b in zip(resolve_layout(model).layers, snap["layers"]))
    assert [p.requires_grad for p in model.parameters()] == snap["flags"]
    assert [m.training for m in model.modules()] == snap["modes"]
    state = model.state_dict()
    assert state.keys() == snap["state"].keys()
    assert all(torch.equal(state[k], v) for k, v in snap["state"].items())
    was_training = model.training
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(X).logits, snap["logits"])
    model.train(was_training)


def user_model(arch="llama"):
    """A model in a state a trainer must not disturb: train mode, one frozen weight."""
    model = tiny_model(arch)
    model.train()
    next(iter(resolve_layout(model).down_proj(0).parameters())).requires_grad_(False)
    return model


# =================================================================================================
# 1. input validation: one SplitPluginError naming the problem and the fix
# =================================================================================================
@pytest.mark.parametrize("text, message", [
    ("layer: [2\n", r"not valid YAML at line 2"),
    ("layer: 2\nlearning_rate: 0.1\n", r"unknown key\(s\) \['learning_rate'\].*valid keys are"),
    ("layer: 2\n1: a\nfoo: b\n", r"unknown key\(s\) \[1, 'foo'\]"),          # mixed key types
    ("layer: two\n", r"wrong type for layer='two' \(expected int\)"),
    ("layer: !!float x\n", r"not valid YAML: ValueError"),                     # a YAML tag that cannot convert
    ("layer: " + "[" * 3000 + "]" * 3000 + "\n", r"not valid YAML"),            # nesting past the recursion limit
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


@pytest.mark.parametrize("config, message", [
    (None, "config must be a TrainConfig, a mapping of settings or a YAML path, got NoneType"),
    (3, "got int"),
    ([("layer", 2)], "got list"),
])
def test_config_of_the_wrong_kind(config, message):
    with pytest.raises(SplitPluginError, match=message):
        train(tiny_model("llama"), tiny_tokenizer(), PAIRS, config)


@pytest.mark.parametrize("model, tok, pairs, message", [
    ("llama", None, PAIRS, "expected a Hugging Face tokenizer, got NoneType"),
    ("llama", "model", PAIRS, "expected a Hugging Face tokenizer, got LlamaForCausalLM"),
    (None, "tok", PAIRS, r"expected a loaded torch model \(nn.Module\), got NoneType"),
    ("a-model-name", "tok", PAIRS, r"expected a loaded torch model \(nn.Module\), got str"),
    ("linear", "tok", PAIRS, "cannot find the decoder layers of this model"),
    ("llama", "tok", None, "training data must be a list of ContrastivePair objects, got NoneType"),
    ("llama", "tok", {"question": "q"}, "got dict"),
    ("llama", "tok", [], "the training set is empty"),
    ("llama", "tok", [("q", "a", "b")], "must be ContrastivePair objects, got tuple"),
])
def test_bad_model_tokenizer_or_pairs_through_train(model, tok, pairs, message):
    real = tiny_model("llama")
    model = {"llama": real, "linear": torch.nn.Linear(3, 3)}.get(model, model)
    tok = {"tok": tiny_tokenizer(), "model": real}.get(tok, tok)
    with pytest.raises(SplitPluginError, match=message):
        train(model, tok, pairs, cfg())
    assert hooked_modules(real) == []


@pytest.mark.parametrize("fields, message", [
    (("q", "", "No"), "ContrastivePair.positive must be a non-empty string"),
    (("q", "Yes", "   "), "ContrastivePair.negative must be a non-empty string"),
    (("q", "Yes", " Yes "), "positive and negative answers are identical"),
    (("q\ud800", "Yes", "No"), "holds a lone surrogate"),   # JSON accepts the escape, tokenizers do not
    ((None, "Yes", "No"), "ContrastivePair.question must be a non-empty string, got None"),
])
def test_bad_pairs(fields, message):
    with pytest.raises(SplitPluginError, match=message):
        ContrastivePair(*fields)


def test_lone_surrogate_in_a_data_file_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "q", "positive": "a", "negative": "b"}\n'
                    '{"question": "q\\ud83d", "positive": "a", "negative": "b"}\n', encoding="utf-8")
    with pytest.raises(SplitPluginError, match="line 2: ContrastivePair.question .* lone surrogate"):
        load_pairs(path)


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


# an intervention onto a model of another shape or type: apply, fold, sweep --------------------------
OTHER = [
    # (trained on, applied to, form, message)
    ("llama", "gpt2", "local_weight", r"intermediate size 48 .*has hidden size 32 and intermediate size 128; load it onto the model"),
    ("llama", "gpt2", "lora", r"intermediate size 48 .*has hidden size 32 and intermediate size 128"),
    ("llama", "gpt_neox", "vector", r"trained on a llama model, but this model is a gpt_neox"),
    ("qwen2", "llama", "local_weight", r"trained on a qwen2 model, but this model is a llama"),
]


@pytest.mark.parametrize("source, target, form, message", OTHER)
def test_intervention_for_another_model_apply_and_fold(source, target, form, message):
    iv = randomized(tiny_model(source), form)
    model = user_model(target)
    snap = snapshot(model)
    with pytest.raises(SplitPluginError, match=message):
        iv.steer(model, 1.0)
    with pytest.raises(SplitPluginError, match=message):
        iv.fold(model, 1.0)
    assert_intact(model, snap)


def test_intervention_for_another_layer_count():
    iv = randomized(tiny_model("llama"), "vector", layer=3)
    model = user_model()
    del model.model.layers[3]
    snap = snapshot(model)
    for call in (lambda: iv.steer(model), lambda: iv.fold(model)):
        with pytest.raises(SplitPluginError, match="layer 3 is out of range: this llama model has 3 decoder"):
            call()
    assert_intact(model, snap)


def test_type_check_can_be_overridden_when_the_weights_are_the_same():
    iv = randomized(tiny_model("llama"), "vector")
    model = tiny_model("gpt_neox")
    iv.config.model_type = "gpt_neox"
    with iv.steer(model, 1.0):
        pass
    assert hooked_modules(model) == []


@needs_sweep
@pytest.mark.parametrize("source, target, form, message", OTHER[1:3])
def test_intervention_for_another_model_sweep(source, target, form, message):
    iv = randomized(tiny_model(source), form)
    model = user_model(target)
    snap = snapshot(model)
    with pytest.raises(SplitPluginError, match=message):
        sweep(model, tiny_tokenizer(), iv, PAIRS[:2], [-1.0, 1.0], bootstrap=0, progress=False)
    assert_intact(model, snap)


def test_device_names_are_checked():
    model = tiny_model("llama")
    with pytest.raises(SplitPluginError, match="device 'gpu' is not a device name"):
        check_device("gpu", model)
    with pytest.raises(SplitPluginError, match="device 'gpu' is not a device name"):
        TrainConfig(layer=1, device="gpu")
    if not torch.cuda.is_available():
        from split_plugin.models import load_default_model
        with pytest.raises(SplitPluginError, match="CUDA is not available"):
            load_default_model(device="cuda:0")  # refused before any conversion or load


def test_corrupted_intervention_config_values_are_refused(tmp_path):
    randomized(tiny_model("llama"), "lora").save_pretrained(tmp_path / "iv")
    path = tmp_path / "iv" / "config.json"
    good = json.loads(path.read_text())
    for key, value, message in [("form", "prefix", "form 'prefix' is not one of"),
                                ("hidden_size", "32", "hidden_size must be a positive integer, got '32'"),
                                ("intermediate_size", -1, "intermediate_size must be a positive integer"),
                                ("rank", 0, "lora rank must be an integer in 1..32"),
                                ("dropout", None, "dropout must be a number"),
                                ("model_type", 7, "model_type must be a string or None, got 7"),
                                ("tensors", "garbled", None)]:
        path.write_text(json.dumps({**good, key: value}))
        if message is None:
            Intervention.from_pretrained(tmp_path / "iv")  # a garbled shape record is only a hint
            continue
        with pytest.raises(SplitPluginError, match=message):
            Intervention.from_pretrained(tmp_path / "iv")


# -- the command line: exit code 2 and one line on stderr, never a traceback -------------------------
@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """The CLI with the tiny model in place of the embedded one, and a small data file."""
    loaded = []

    def load(name):
        loaded.append(name)
        return {"gpt_neox": tiny_model("gpt_neox")}.get(name, tiny_model("llama")), tiny_tokenizer()

    monkeypatch.setattr(cli, "_load_model", load)
    try:
        import split_plugin.analysis.cli as analysis_cli
        monkeypatch.setattr(analysis_cli, "_load_model", load)
    except ImportError:
        pass
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"question": p.question, "positive": p.positive,
                                                   "negative": p.negative} for p in PAIRS[:4]])
    return tmp_path, data


def run_cli(capsys, argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def hparams(folder: Path, text: str) -> Path:
    path = folder / "h.yaml"
    path.write_text(text, encoding="utf-8")
    return path


TRAIN_OK = "layer: 2\nepochs: 1\nbatch_size: 2\nprogress: false\n"


@pytest.mark.parametrize("yaml_text, extra, message", [
    ("layer: [2\n", [], r"is not valid YAML at line 2"),
    ("layer: 2\nlr_rate: 1\n", [], r"unknown key\(s\) \['lr_rate'\]"),
    ("layer: two\n", [], r"wrong type for layer='two'"),
    ("epochs: 1\n", [], r"missing required key\(s\) \['layer'\]"),
    (TRAIN_OK, ["--layer", "12"], r"layer 12 is out of range: this llama model has 4 decoder layers"),
    (TRAIN_OK, ["--form", "prefix"], r"form 'prefix' is not one of"),
    (TRAIN_OK + "form: lora\nrank: 99\n", [], r"lora rank must be an integer in 1..32"),
    (TRAIN_OK + "device: cuda:0\n", [], r"CUDA is not available"),
    (TRAIN_OK, ["--data", "{tmp}/empty.jsonl"], r"the dataset is empty"),
    (TRAIN_OK, ["--data", "{tmp}/cols.jsonl"], r"missing column\(s\) \['negative'\]; found columns "
                                                r"\['question', 'positive', 'neg'\]"),
    (TRAIN_OK, ["--data", "{tmp}/nope.jsonl"], r"data file '.*nope.jsonl' does not exist"),
    (TRAIN_OK, ["--resume", "{tmp}/ckpt"], r"is not a readable checkpoint \(\w+: .*\); it is corrupted"),
    (TRAIN_OK, ["--out", "{data}"], r"pairs.jsonl is an existing file, not a folder; nothing was written"),
    (TRAIN_OK, ["--out", "{tmp}/user"], r"already holds files that are not a previous saved intervention"),
])
def test_cli_train_bad_input_is_one_line(cli_env, capsys, yaml_text, extra, message):
    if "cuda" in yaml_text and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    tmp, data = cli_env
    (tmp / "empty.jsonl").write_text("\n")
    write_jsonl(tmp / "cols.jsonl", [{"question": "Q", "positive": "a", "neg": "b"}])
    (tmp / "ckpt").mkdir()
    (tmp / "ckpt" / CHECKPOINT_NAME).write_bytes(os.urandom(300))  # torch's message spans lines
    (tmp / "user").mkdir()
    (tmp / "user" / "notes.txt").write_text("mine")
    before = data.read_bytes()
    argv = ["train", "--hparams", hparams(tmp, yaml_text), "--data", data, "--out", tmp / "out"]
    argv += [a.format(tmp=tmp, data=data) for a in extra]  # later flags win
    code, out, err = run_cli(capsys, argv)
    assert code == 2, err
    assert err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("split-steer: error: ")
    assert __import__("re").search(message, err), err
    assert not (tmp / "out").exists()
    assert data.read_bytes() == before and (tmp / "user" / "notes.txt").read_text() == "mine"


def test_cli_train_then_generate_with_the_wrong_model(cli_env, capsys):
    tmp, data = cli_env
    code, out, err = run_cli(capsys, ["train", "--hparams", hparams(tmp, TRAIN_OK), "--data", data,
                                      "--out", tmp / "iv"])
    assert code == 0 and "saved vector intervention" in out
    code, out, err = run_cli(capsys, ["train", "--hparams", hparams(tmp, TRAIN_OK), "--data", data,
                                      "--out", tmp / "iv"])
    assert code == 0  # replacing a previous save is fine
    code, _, err = run_cli(capsys, ["generate", "--intervention", tmp / "iv", "--model", "gpt_neox",
                                    "--prompt", "hi", "--max-new-tokens", "2"])
    assert code == 2 and err.count("\n") == 1
    assert "trained on a llama model, but this model is a gpt_neox" in err
    code, _, err = run_cli(capsys, ["generate", "--intervention", tmp / "iv", "--multiplier", "nan",
                                    "--prompt", "hi", "--max-new-tokens", "2"])
    assert code == 2 and "multiplier must be a finite number" in err
    code, _, err = run_cli(capsys, ["generate", "--intervention", tmp / "missing", "--prompt", "hi"])
    assert code == 2 and "is not a saved intervention" in err


def test_cli_interrupt_exits_130(cli_env, capsys, monkeypatch):
    tmp, data = cli_env

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", interrupted)
    code, _, err = run_cli(capsys, ["train", "--hparams", hparams(tmp, TRAIN_OK), "--data", data,
                                    "--out", tmp / "iv"])
    assert code == 130 and err == "split-steer: interrupted\n"
    assert not (tmp / "iv").exists()


@needs_sweep
@pytest.mark.parametrize("multipliers, message", [
    ("1,nan", r"multipliers must be finite numbers, got \[nan\]"),
    ("1,inf", r"multipliers must be finite numbers, got \[inf\]"),
    (",", r"--multipliers is empty"),
])
def test_cli_sweep_bad_multipliers(cli_env, capsys, multipliers, message):
    tmp, data = cli_env
    randomized(tiny_model("llama"), "vector").save_pretrained(tmp / "iv")
    code, _, err = run_cli(capsys, ["sweep", "--intervention", tmp / "iv", "--data", data, "--multipliers",
                                    multipliers, "--out", tmp / "report", "--no-heldout", "--no-progress"])
    assert code == 2 and err.count("\n") == 1 and __import__("re").search(message, err), err
    assert not (tmp / "report").exists()


# =================================================================================================
# 2. atomic files: a save killed half-way keeps the previous one, leaves no temp, is never loaded
# =================================================================================================
def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("where", ["weights", "checksum", "second rename"])
def test_intervention_save_killed_half_way(tmp_path, monkeypatch, where):
    model = tiny_model("llama")
    first, second = randomized(model, "lora", seed=1), randomized(model, "lora", seed=2)
    first.save_pretrained(tmp_path / "iv")
    files_before = {p.name: p.read_bytes() for p in (tmp_path / "iv").iterdir()}

    real_replace = os.replace

    def half_written(tensors, filename, *a, **k):
        Path(filename).write_bytes(b"\x00" * 10)  # a partial file, then the process "dies"
        raise KeyboardInterrupt

    def killed(*a, **k):
        raise KeyboardInterrupt

    def replace(src, dst):
        if str(src).endswith(".tmp"):
            raise OSError("no space left on device")
        return real_replace(src, dst)

    if where == "weights":
        monkeypatch.setattr(ser, "save_file", half_written)
    elif where == "checksum":
        monkeypatch.setattr(ser, "_sha256", killed)     # weights written, config not yet
    else:
        monkeypatch.setattr(fileio.os, "replace", replace)  # old folder moved aside, new one fails
    with pytest.raises((KeyboardInterrupt, OSError)):
        second.save_pretrained(tmp_path / "iv")
    monkeypatch.undo()
    assert names(tmp_path) == ["iv"]  # no temp or .old folder left
    assert {p.name: p.read_bytes() for p in (tmp_path / "iv").iterdir()} == files_before
    back = Intervention.from_pretrained(tmp_path / "iv")
    assert all(torch.equal(a, b) for a, b in zip(back.parameters(), first.parameters()))


def test_a_hard_kill_leaves_only_a_hidden_temp_folder_that_is_never_loaded(tmp_path, monkeypatch):
    model = tiny_model("llama")
    monkeypatch.setattr(fileio.shutil, "rmtree", lambda *a, **k: None)  # no cleanup: like SIGKILL
    monkeypatch.setattr(ser, "_sha256", lambda path: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        randomized(model, "vector").save_pretrained(tmp_path / "iv")
    monkeypatch.undo()
    leftover = names(tmp_path)
    assert len(leftover) == 1 and leftover[0].startswith(".iv.") and leftover[0].endswith(".tmp")
    with pytest.raises(SplitPluginError, match="is not a saved intervention"):
        Intervention.from_pretrained(tmp_path / "iv")
    with pytest.raises(SplitPluginError, match="is not a saved intervention"):
        Intervention.from_pretrained(tmp_path / leftover[0])  # weights without config.json


def test_saves_never_replace_a_users_file_or_folder(tmp_path):
    model = tiny_model("llama")
    iv = randomized(model, "lora")
    user_file = tmp_path / "results.txt"
    user_file.write_text("precious")
    user_dir = tmp_path / "project"
    user_dir.mkdir()
    (user_dir / "config.json").write_text("{}")      # even one that shares a file name with a save
    (user_dir / "train.py").write_text("precious")
    for save in (lambda p: iv.save_pretrained(p), lambda p: export_peft(iv, model, p)):
        with pytest.raises(SplitPluginError, match="is an existing file, not a folder; nothing was written"):
            save(user_file)
        with pytest.raises(SplitPluginError, match=r"holds files that are not a previous .*'train.py'\]"):
            save(user_dir)
    assert user_file.read_text() == "precious" and (user_dir / "train.py").read_text() == "precious"
    assert names(tmp_path) == ["project", "results.txt"]
    export_peft(iv, model, tmp_path / "adapter")
    export_peft(iv, model, tmp_path / "adapter")  # its own previous export is replaced


def test_checkpoint_save_killed_half_way(tmp_path, monkeypatch):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    settings = cfg(checkpoint_dir=str(tmp_path), checkpoint_every=1)
    train(model, tok, PAIRS, settings)
    good = (tmp_path / CHECKPOINT_NAME).read_bytes()
    real_save = torch.save

    def dies_half_way(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        Path(f).write_bytes(Path(f).read_bytes()[:100])  # truncated, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module.torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        train(model, tok, PAIRS, settings)
    monkeypatch.undo()
    assert names(tmp_path) == [CHECKPOINT_NAME]
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == good
    assert hooked_modules(model) == []
    train(model, tok, PAIRS, settings, resume=tmp_path)  # the previous checkpoint still resumes


def test_model_cache_conversion_killed_at_the_marker(tmp_path, monkeypatch):
    from split_plugin import gguf_cache, models

    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(tmp_path / "cache"))
    gguf = tmp_path / "Fake.Q4_1.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    monkeypatch.setattr(gguf_cache, "_convert_gguf", lambda g, out: (out / "config.json").write_text("{}"))
    real_write = gguf_cache._write_json

    def killed_at_marker(path, data):
        if path.name == gguf_cache.MARKER:
            path.write_text('{"half')
            raise KeyboardInterrupt
        real_write(path, data)

    monkeypatch.setattr(gguf_cache, "_write_json", killed_at_marker)
    with pytest.raises(KeyboardInterrupt):
        models.ensure_converted(gguf)
    final = models.converted_dir(gguf)
    assert not final.exists() and names(tmp_path / "cache") == []
    monkeypatch.setattr(gguf_cache, "_write_json", real_write)
    assert models.is_complete(models.ensure_converted(gguf))


@needs_sweep
def test_report_rewrite_killed_half_way_keeps_the_previous_report(tmp_path, monkeypatch):
    import numpy as np

    from split_plugin.analysis import SweepResult, plots, write_report

    pos = np.log(np.array([[0.2, 0.1], [0.5, 0.3], [0.7, 0.6]]))
    neg = np.log(np.array([[0.6, 0.5], [0.3, 0.3], [0.1, 0.2]]))
    result = SweepResult.from_logprobs([-1.0, 0.0, 1.0], pos, neg, [1, 1], [1, 1], bootstrap=0)
    out = write_report({"SPLIT": result}, tmp_path / "report", title="first")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "plot_frontier", killed)
    with pytest.raises(KeyboardInterrupt):
        write_report({"SPLIT": result}, tmp_path / "report", title="second")
    monkeypatch.undo()
    assert names(tmp_path) == ["report"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (tmp_path / "file").write_text("mine")
    with pytest.raises(SplitPluginError, match="is an existing file"):
        write_report({"SPLIT": result}, tmp_path / "file")
    assert (tmp_path / "file").read_text() == "mine"


# =================================================================================================
# 3. interrupted training: checkpoint, no hooks, resume = uninterrupted (bit for bit)
# =================================================================================================
def _interrupt(monkeypatch, where: str) -> None:
    """Raise KeyboardInterrupt at one point of the second optimizer step (or of the KL set-up)."""
    calls = {"step_loss": 0, "kl": 0}
    step_loss, kl_loss, capture = _Trainer.step_loss, KLPenalty.__call__, train_module.capture_prefix

    def counting_step_loss(self, key, gen):
        calls["step_loss"] += 1
        return step_loss(self, key, gen)

    def interrupting_kl(self, intervention, step, s, autocast):
        calls["kl"] += 1
        if where == "backward" and calls["kl"] == 4:  # step 2, after its first key's backward
            raise KeyboardInterrupt
        return kl_loss(self, intervention, step, s, autocast)

    def interrupting_capture(layout, layer, *args, **kwargs):
        in_kl_setup = calls["kl"] > 0 and calls["step_loss"] == 1
        if not ((where == "prefix" and calls["step_loss"] >= 3) or (where == "kl_setup" and in_kl_setup)):
            return capture(layout, layer, *args, **kwargs)

        def ctrl_c(module, args):
            raise KeyboardInterrupt  # inside the capture, while layers L.. are swapped for recorders

        hook = layout.layers[layer - 1].register_forward_pre_hook(ctrl_c)
        try:
            return capture(layout, layer, *args, **kwargs)
        finally:
            hook.remove()

    monkeypatch.setattr(_Trainer, "step_loss", counting_step_loss)
    monkeypatch.setattr(KLPenalty, "__call__", interrupting_kl)
    monkeypatch.setattr(train_module, "capture_prefix", interrupting_capture)
    monkeypatch.setattr(regularizers, "capture_prefix", interrupting_capture)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("where, saved_step", [("prefix", 1), ("kl_setup", 0), ("backward", 1)])
def test_interrupt_then_resume_equals_uninterrupted(tmp_path, monkeypatch, form, where, saved_step):
    tok = tiny_tokenizer()
    model = user_model("qwen2")
    text = tmp_path / "generic.txt"
    text.write_text("The river ran past the mill and under the old stone bridge. " * 4)
    settings = cfg(form=form, epochs=2, batch_size=2, grad_accum=2, dropout=0.1, kl_weight=0.5,
                   kl_text=str(text), max_length=64, checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=1)
    straight = params(train(model, tok, PAIRS, {**settings, "checkpoint_dir": None}))
    snap = snapshot(model)

    _interrupt(monkeypatch, where)
    with pytest.raises(KeyboardInterrupt):
        train(model, tok, PAIRS, settings)
    monkeypatch.undo()
    assert_intact(model, snap)
    assert names(tmp_path / "ckpt") == [CHECKPOINT_NAME]
    assert torch.load(tmp_path / "ckpt" / CHECKPOINT_NAME, weights_only=True)["step"] == saved_step

    resumed = params(train(model, tok, PAIRS, settings, resume=tmp_path / "ckpt"))
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight), form
    assert_intact(model, snap)


def _checkpoint(tmp_path) -> tuple[dict, dict]:
    settings = cfg(checkpoint_dir=str(tmp_path / "good"), checkpoint_every=1)
    train(tiny_model("llama"), tiny_tokenizer(), PAIRS, settings)
    return settings, torch.load(tmp_path / "good" / CHECKPOINT_NAME, weights_only=True)


@pytest.mark.parametrize("damage, message", [
    (lambda good: os.urandom(400), r"not a readable checkpoint \(\w+Error"),
    (lambda good: b"", r"not a readable checkpoint \(EOFError"),
    (lambda good: [1, 2, 3], r"is not a split_plugin checkpoint \(format 1\)"),
    (lambda good: torch.zeros(3), r"is not a split_plugin checkpoint"),
    (lambda good: {"format": 1}, r"damaged checkpoint \(bad or missing \['step', 'config'"),
    (lambda good: {**good, "step": "3"}, r"damaged checkpoint \(bad or missing \['step'\]\)"),
    (lambda good: {**good, "step": -1}, r"damaged checkpoint"),
    (lambda good: {**good, "log": 5}, r"bad or missing \['log'\]"),
    (lambda good: {**good, "step": 10 ** 6}, r"at step 1000000, past the 4 steps of this run"),
    (lambda good: {**good, "intervention": {"vector": torch.zeros(7)}},
     r"does not fit this training run \(RuntimeError: .*size mismatch for vector"),
    (lambda good: {**good, "intervention": {}}, r"does not fit this training run .*Missing key"),
    (lambda good: {**good, "intervention": {"vector": torch.full((32,), math.nan)}},
     r"non-finite or non-tensor values in \['vector'\]"),
    (lambda good: {**good, "optimizer": {"state": {}}}, r"does not fit this training run \(KeyError"),
    (lambda good: {**good, "intervention_config": {**good["intervention_config"], "model_type": "gpt2"}},
     r"holds an intervention with other \['model_type'\] \(\['gpt2'\] there, \['llama'\] here\)"),
])
def test_damaged_or_foreign_checkpoint_is_refused(tmp_path, damage, message):
    settings, good = _checkpoint(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    content = damage(good)
    if isinstance(content, bytes):
        (bad / CHECKPOINT_NAME).write_bytes(content)
    else:
        torch.save(content, bad / CHECKPOINT_NAME)
    model = user_model()
    snap = snapshot(model)
    with pytest.raises(SplitPluginError, match=message):
        train(model, tiny_tokenizer(), PAIRS, {**settings, "checkpoint_dir": None}, resume=bad)
    assert_intact(model, snap)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    settings, _ = _checkpoint(tmp_path)
    with pytest.raises(SplitPluginError, match="other \\['model_type'\\].*resume with the same model"):
        train(tiny_model("gpt_neox"), tiny_tokenizer(), PAIRS, settings, resume=tmp_path / "good")


def test_checkpoint_dir_that_is_a_file_fails_before_training(tmp_path):
    blocker = tmp_path / "ckpt"
    blocker.write_text("mine")
    history = []
    with pytest.raises(SplitPluginError, match="checkpoint_dir .* is an existing file; give a folder"):
        train(tiny_model("llama"), tiny_tokenizer(), PAIRS, cfg(checkpoint_dir=str(blocker)), history=history)
    assert history == [] and blocker.read_text() == "mine"


# =================================================================================================
# 4. model integrity after any failure inside train / sweep / fold
# =================================================================================================
def _raising_hook(model, layer: int, make):
    """A user hook on decoder layer `layer` whose output is replaced by `make(output)`."""
    def hook(module, args, output):
        return make(output)
    return resolve_layout(model).layers[layer].register_forward_hook(hook)


def _boom(output):
    raise RuntimeError("boom in the forward")


def _nan(output):
    return (output[0] * math.nan,) + tuple(output[1:]) if isinstance(output, tuple) else output * math.nan


@pytest.mark.parametrize("method", ["split", "reps", "caa"])
@pytest.mark.parametrize("at, prefix_cache", [(LAYER + 1, True), (LAYER + 1, False), (LAYER - 1, True)])
def test_exception_in_the_forward_leaves_the_model_intact(method, at, prefix_cache):
    model = user_model()
    snap = snapshot(model)
    handle = _raising_hook(model, at, _boom)
    try:
        if method == "caa" and at > LAYER:  # CAA stops at layer L: nothing above it runs
            train(model, tiny_tokenizer(), PAIRS, cfg(method=method, prefix_cache=prefix_cache))
        else:
            with pytest.raises(RuntimeError, match="boom in the forward"):
                train(model, tiny_tokenizer(), PAIRS, cfg(method=method, form="lora" if method != "caa"
                                                          else "vector", prefix_cache=prefix_cache))
    finally:
        handle.remove()
    assert_intact(model, snap)


def test_nan_in_the_forward_stops_training_and_leaves_the_model_intact(tmp_path):
    model = user_model()
    snap = snapshot(model)
    handle = _raising_hook(model, LAYER + 1, _nan)
    try:
        with pytest.raises(SplitPluginError, match=r"loss became non-finite at step 1 \(last finite loss None\)"):
            train(model, tiny_tokenizer(), PAIRS, cfg(form="local_weight"))
    finally:
        handle.remove()
    assert_intact(model, snap)


def test_a_bad_pair_in_the_last_batch_fails_before_any_step(tmp_path):
    model = user_model()
    snap = snapshot(model)
    long = ContrastivePair("a short question?", "an answer far too long " * 4, "No")
    history = []
    with pytest.raises(SplitPluginError, match=r"leaves no room for the prompt within max_length=32"):
        train(model, tiny_tokenizer(), PAIRS + [long], cfg(max_length=32, checkpoint_dir=str(tmp_path / "c")),
              history=history)
    assert history == [] and not (tmp_path / "c").exists()
    assert_intact(model, snap)


@needs_sweep
@pytest.mark.parametrize("at", [LAYER - 1, LAYER + 1])
def test_exception_in_a_sweep_forward_leaves_the_model_intact(at):
    model = user_model()
    snap = snapshot(model)
    iv = randomized(model, "lora")
    handle = _raising_hook(model, at, _boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            sweep(model, tiny_tokenizer(), iv, PAIRS, [-1.0, 1.0], bootstrap=0, progress=False)
    finally:
        handle.remove()
    assert_intact(model, snap)


@needs_sweep
def test_a_bad_pair_in_a_sweep_leaves_the_model_intact():
    model = user_model()
    snap = snapshot(model)
    long = ContrastivePair("q?", "an answer far too long " * 4, "No")
    with pytest.raises(SplitPluginError, match="leaves no room for the prompt"):
        sweep(model, tiny_tokenizer(), randomized(model, "vector"), PAIRS[:3] + [long], [1.0],
              max_length=32, bootstrap=0, progress=False)
    assert_intact(model, snap)


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


# =================================================================================================
# 5. numerical guards
# =================================================================================================
class _InfGrad(torch.autograd.Function):
    """Identity forward (a finite loss), infinite gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


def test_infinite_gradients_stop_training_with_step_and_last_loss(tmp_path, monkeypatch):
    model = user_model()
    snap = snapshot(model)
    original = _Trainer.step_loss
    calls = {"n": 0}

    def poisoned(self, key, gen):
        calls["n"] += 1
        loss, margin = original(self, key, gen)
        return (_InfGrad.apply(loss) if calls["n"] == 3 else loss), margin

    monkeypatch.setattr(_Trainer, "step_loss", poisoned)
    with pytest.raises(SplitPluginError, match=r"the gradient norm became non-finite at step 3 \(last "
                                               r"finite loss \d+\.\d+\); lower lr .*checkpoint is in"):
        train(model, tiny_tokenizer(), PAIRS, cfg(form="lora", checkpoint_dir=str(tmp_path), checkpoint_every=1))
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["intervention"].values())
    assert_intact(model, snap)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_token_logprobs_are_computed_in_fp32(dtype):
    logits = torch.tensor([[20.0, -130.0, 0.0, -60.0], [0.5, 0.25, -0.75, 1.0]], dtype=dtype)
    targets = torch.tensor([1, 1])
    naive = torch.log(torch.softmax(logits, -1)).gather(-1, targets[:, None]).squeeze(-1)
    assert not torch.isfinite(naive).all()  # e^-150 underflows to 0 in half precision
    got = objectives.token_logprobs(logits, targets)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    want = torch.log_softmax(logits.double(), -1).gather(-1, targets[:, None]).squeeze(-1)
    assert torch.allclose(got.double(), want, rtol=1e-6, atol=0)  # half arithmetic is off by ~1e-3
    half = torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1)
    assert not torch.allclose(half.double(), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_log_odds_of_half_inputs_are_finite_fp64(dtype):
    lp_pos = torch.tensor([-20.0, -1e-3, -0.6931, -110.0], dtype=dtype)
    lp_neg = torch.tensor([-25.0, -12.0, -9.0, -115.0], dtype=dtype)
    p = lp_pos.exp() + lp_neg.exp()
    naive = torch.log(p / (1 - p))
    assert not torch.isfinite(naive).all()  # exp underflows / 1 - p rounds to 0 in half precision
    util = objectives.utility_log_odds(lp_pos, lp_neg)
    pref = objectives.preference_log_odds(lp_pos, lp_neg)
    assert util.dtype == pref.dtype == torch.float64
    assert torch.isfinite(util).all() and torch.isfinite(pref).all()
    s = torch.logaddexp(lp_pos.double(), lp_neg.double())
    assert torch.allclose(util, s - torch.log1p(-s.exp()), rtol=1e-9)
    assert torch.allclose(pref, lp_pos.double() - lp_neg.double())


def test_sequence_logprobs_of_bf16_logits_are_fp32():
    from split_plugin.objectives import AnswerTokens, sequence_logprobs
    labels = torch.tensor([[-100, 5, 6, -100], [-100, -100, 7, 8]])
    tokens = AnswerTokens.from_labels(labels)
    logits = (torch.randn(tokens.rows.numel(), 16, generator=torch.Generator().manual_seed(0)) * 40).bfloat16()
    got = sequence_logprobs(logits, tokens)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()


# =================================================================================================
# 7. determinism: same seed, same data, same machine -> identical tensors
# =================================================================================================
@pytest.mark.parametrize("method, form", [(m, f) for m in ("split", "sft", "reps") for f in FORMS]
                         + [("caa", "vector")])
def test_same_seed_gives_identical_interventions(method, form):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    settings = cfg(method=method, form=form, epochs=2, dropout=0.0 if method == "caa" else 0.2)
    rng = torch.get_rng_state()
    a = params(train(model, tok, PAIRS, settings))
    assert torch.equal(torch.get_rng_state(), rng)  # training does not consume the caller's RNG
    torch.manual_seed(1234)  # nor depend on it
    b = params(train(model, tok, PAIRS, settings))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if method != "caa":
        c = params(train(model, tok, PAIRS, {**settings, "seed": 4}))
        assert any(not torch.equal(a[k], c[k]) for k in a)  # the seed matters


# =================================================================================================
# the EasyEdit adapter (imports easyeditor: ~15 s, so only a few checks here)
# =================================================================================================
@pytest.fixture(scope="module")
def easyedit():
    try:
        import split_plugin.easyedit as module
    except Exception as exc:  # easyeditor or its dependencies missing
        pytest.skip(f"split_plugin.easyedit is not importable: {exc}")
    return module


@pytest.mark.easyedit
def test_easyedit_bad_hparams_and_requests_leave_the_model_intact(easyedit, tmp_path):
    model, tok = user_model(), tiny_tokenizer()
    snap = snapshot(model)
    path = tmp_path / "split.yaml"
    for text, message in [("alg_name: SPLIT\nlayer: [1\n", "not valid YAML at line"),
                          ("alg_name: SPLIT\nmodel_name: x\nlayer: 1\nlearning_rate: 1\n", "unknown key"),
                          ("alg_name: SPLIT\nmodel_name: x\nlayer: one\n", "wrong type for layer='one'")]:
        path.write_text(text)
        with pytest.raises(SplitPluginError, match=message):
            easyedit.SPLITHyperParams.from_hparams(path)
    hparams = easyedit.SPLITHyperParams.from_dict(
        {"alg_name": "SPLIT", "model_name": easyedit.preloaded(model, tok), "layer": 2, "epochs": 1,
         "factors": [1.0], "multiplier": 1.0})
    good = {"prompt": "Do you like tea?", "target_new": "Yes", "ground_truth": "No"}
    for requests, message in [([], "got no requests"),
                              ([{"prompt": "q"}], "needs a non-empty 'prompt' and 'target_new'"),
                              (["q"], "must be a dict"),
                              ([{**good, "ground_truth": "Yes"}], "identical")]:
        with pytest.raises(SplitPluginError, match=message):
            easyedit.apply_split_to_model(model, tok, requests, hparams)
    bad_layer = __import__("dataclasses").replace(hparams, layer=7)
    with pytest.raises(SplitPluginError, match="layer 7 is out of range: this llama model has 4"):
        easyedit.apply_split_to_model(model, tok, [good], bad_layer)
    assert_intact(model, snap)
