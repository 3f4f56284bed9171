"""`split-steer` as a newcomer meets it: help everywhere, overrides, generate's defaults and errors."""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys

import pytest
from tiny import tiny_model, tiny_tokenizer

from split_plugin import Intervention, cli
from split_plugin.data import HELDOUT_WORDS


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_has_help_and_shows_its_default():
    for name, sub in _subparsers(cli.build_parser()).items():
        text = sub.format_help()
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings} has no help text"
            if action.default is not None and action.default is not False and not action.required:
                assert f"(default: {action.default})" in " ".join(text.split()) or "default" in action.help, \
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
