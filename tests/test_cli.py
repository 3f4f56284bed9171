"""`split-steer` as a newcomer meets it: help everywhere, overrides, generate's defaults and errors."""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import PAIRS, randomized, tiny_model, tiny_tokenizer

from split_plugin import Intervention, cli
from split_plugin import trainer as train_module
from split_plugin.checkpoints import CHECKPOINT_NAME
from split_plugin.data import HELDOUT_WORDS


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_has_help_and_shows_its_default():
    for name, sub in _subparsers(cli.build_parser()).items():
        text = re.sub(r"-\s+", "-", " ".join(sub.format_help().split()))  # argparse wraps after hyphens
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings} has no help text"
            if action.default is not None and action.default is not False and not action.required:
                assert f"(default: {action.default})" in text or "default" in action.help, \
                    f"{name} {action.option_strings} does not show its default"


def test_sweep_heldout_words_default_is_the_library_default():
    sweep = _subparsers(cli.build_parser())["sweep"]
    assert f"default: {HELDOUT_WORDS}" in " ".join(sweep.format_help().split())


def test_import_and_help_do_not_load_torch():
    """`split-steer --help` stays fast because nothing heavy is imported to build the parser."""
    code = ("import sys, split_plugin.cli as c; c.build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'transformers', 'matplotlib', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_functions_stay_functions_after_every_submodule_is_imported():
    """A lazy name that equals its submodule's name would be replaced by the module on import."""
    code = ("import importlib, pkgutil, split_plugin as sp\n"
            "for m in pkgutil.walk_packages(sp.__path__, 'split_plugin.'):\n"
            "    if '.easyedit' not in m.name: importlib.import_module(m.name)\n"
            "import split_plugin.analysis as an\n"
            "print(sorted(n for pkg in (sp, an) for n in pkg.__all__ if type(getattr(pkg, n)).__name__ == 'module'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


@pytest.fixture
def env(tmp_path, monkeypatch):
    """The CLI on a tiny llama, with a small data file."""
    monkeypatch.setattr(cli, "_load_model", lambda name: (tiny_model("llama"), tiny_tokenizer()))
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"question": f"q {i}?", "positive": "Yes", "negative": "No"}) + "\n"
                            for i in range(4)))
    (tmp_path / "h.yaml").write_text("layer: 2\nepochs: 3\nbatch_size: 2\nprogress: false\n"
                                     "factors: [3.0, 5.0, 7.0]\n")
    return tmp_path, data


def _run(capsys, argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_epochs_and_device_override_the_yaml(env, capsys, monkeypatch):
    tmp, data = env
    seen = {}
    import split_plugin.trainer as trainer

    real = trainer.train

    def spy(model, tok, pairs, config, **kw):
        seen["config"] = config
        return real(model, tok, pairs, config, **kw)

    monkeypatch.setattr(trainer, "train", spy)
    code, out, err = _run(capsys, ["train", "--hparams", tmp / "h.yaml", "--data", data, "--out", tmp / "iv",
                                   "--epochs", "1", "--device", "cpu"])
    assert code == 0, err
    assert seen["config"].epochs == 1 and seen["config"].device == "cpu"
    saved = Intervention.from_pretrained(tmp / "iv")
    assert saved.config.trained_range == [3.0, 7.0]  # recorded at training time


def test_generate_defaults_inside_the_trained_range(env, capsys, monkeypatch):
    tmp, data = env
    assert _run(capsys, ["train", "--hparams", tmp / "h.yaml", "--data", data, "--out", tmp / "iv",
                         "--epochs", "1"])[0] == 0
    used = {}
    import split_plugin.generation as gen

    def fake(model, tok, prompts, intervention, multiplier, **kw):
        used["m"] = multiplier
        return [""] * len(prompts)

    monkeypatch.setattr(gen, "generate", fake)
    code, out, err = _run(capsys, ["generate", "--intervention", tmp / "iv", "--prompt", "hi"])
    assert code == 0, err
    assert used["m"] == 3.0 and "m = 3" in out and "3..7" in out


def test_untrained_intervention_defaults_to_one(llama):
    assert cli.default_multiplier(Intervention.for_model(llama, "vector", 1))[0] == 1.0


@pytest.mark.parametrize("argv, stdin", [([], ""), ([], "\n  \n"), (["--prompt", "  "], "")])
def test_generate_without_a_prompt_is_one_clear_error(env, capsys, monkeypatch, argv, stdin):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code, out, err = _run(capsys, ["generate", *argv])
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1
    assert "no prompt to answer: pass --prompt" in err


# -- the command line on bad input: exit code 2 and one line on stderr, never a traceback -----------
def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """The CLI with the tiny model in place of the embedded one, and a small data file."""
    import split_plugin.analysis.cli as analysis_cli

    def load(name):
        return {"gpt_neox": tiny_model("gpt_neox")}.get(name, tiny_model("llama")), tiny_tokenizer()

    monkeypatch.setattr(cli, "_load_model", load)
    monkeypatch.setattr(analysis_cli, "_load_model", load)
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"question": p.question, "positive": p.positive,
                                                   "negative": p.negative} for p in PAIRS[:4]])
    return tmp_path, data


def hparams(folder: Path, text: str) -> Path:
    path = folder / "h.yaml"
    path.write_text(text, encoding="utf-8")
    return path


TRAIN_OK = "layer: 2\nepochs: 1\nbatch_size: 2\nprogress: false\n"


@pytest.mark.usefixtures("one_thread")
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
    code, out, err = _run(capsys, argv)
    assert code == 2, err
    assert err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("split-steer: error: ")
    assert __import__("re").search(message, err), err
    assert not (tmp / "out").exists()
    assert data.read_bytes() == before and (tmp / "user" / "notes.txt").read_text() == "mine"


@pytest.mark.usefixtures("one_thread")
def test_cli_train_then_generate_with_the_wrong_model(cli_env, capsys):
    tmp, data = cli_env
    code, out, err = _run(capsys, ["train", "--hparams", hparams(tmp, TRAIN_OK), "--data", data,
                                   "--out", tmp / "iv"])
    assert code == 0 and "saved vector intervention" in out
    code, out, err = _run(capsys, ["train", "--hparams", hparams(tmp, TRAIN_OK), "--data", data,
                                   "--out", tmp / "iv"])
    assert code == 0  # replacing a previous save is fine
    code, _, err = _run(capsys, ["generate", "--intervention", tmp / "iv", "--model", "gpt_neox",
                                 "--prompt", "hi", "--max-new-tokens", "2"])
    assert code == 2 and err.count("\n") == 1
    assert "trained on a llama model, but this model is a gpt_neox" in err
    code, _, err = _run(capsys, ["generate", "--intervention", tmp / "iv", "--multiplier", "nan",
                                 "--prompt", "hi", "--max-new-tokens", "2"])
    assert code == 2 and "multiplier must be a finite number" in err
    code, _, err = _run(capsys, ["generate", "--intervention", tmp / "missing", "--prompt", "hi"])
    assert code == 2 and "is not a saved intervention" in err


@pytest.mark.usefixtures("one_thread")
def test_cli_interrupt_exits_130(cli_env, capsys, monkeypatch):
    tmp, data = cli_env

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", interrupted)
    code, _, err = _run(capsys, ["train", "--hparams", hparams(tmp, TRAIN_OK), "--data", data,
                                 "--out", tmp / "iv"])
    assert code == 130 and err == "split-steer: interrupted\n"
    assert not (tmp / "iv").exists()


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("multipliers, message", [
    ("1,nan", r"multipliers must be finite numbers, got \[nan\]"),
    ("1,inf", r"multipliers must be finite numbers, got \[inf\]"),
    (",", r"--multipliers is empty"),
])
def test_cli_sweep_bad_multipliers(cli_env, capsys, multipliers, message):
    tmp, data = cli_env
    randomized(tiny_model("llama"), "vector").save_pretrained(tmp / "iv")
    code, _, err = _run(capsys, ["sweep", "--intervention", tmp / "iv", "--data", data, "--multipliers",
                                 multipliers, "--out", tmp / "report", "--no-heldout", "--no-progress"])
    assert code == 2 and err.count("\n") == 1 and __import__("re").search(message, err), err
    assert not (tmp / "report").exists()


def test_demo_default_methods_match_the_demo_module():
    """The CLI spells the demo's default out (its --help imports no torch); the two must agree."""
    from split_plugin import demo

    args = cli.build_parser().parse_args(["demo"])
    assert args.methods == demo.DEFAULT_METHODS
    demo.parse_methods(args.methods)  # every default name is a known method
