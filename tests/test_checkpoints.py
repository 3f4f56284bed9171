"""Training checkpoints: a save killed half-way keeps the previous one; a damaged or foreign
checkpoint is refused on resume and the model is left as it was."""
import math
import os
from pathlib import Path

import pytest
import torch
from tiny import PAIRS, assert_intact, names, short_run, snapshot, tiny_model, tiny_tokenizer, user_model

from split_plugin import SplitPluginError
from split_plugin.checkpoints import CHECKPOINT_NAME
from split_plugin.safety import hooked_modules
from split_plugin.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_checkpoint_save_killed_half_way(tmp_path, monkeypatch):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    settings = short_run(checkpoint_dir=str(tmp_path), checkpoint_every=1)
    train(model, tok, PAIRS, settings)
    good = (tmp_path / CHECKPOINT_NAME).read_bytes()
    real_save = torch.save

    def dies_half_way(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        Path(f).write_bytes(Path(f).read_bytes()[:100])  # truncated, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        train(model, tok, PAIRS, settings)
    monkeypatch.undo()
    assert names(tmp_path) == [CHECKPOINT_NAME]
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == good
    assert hooked_modules(model) == []
    train(model, tok, PAIRS, settings, resume=tmp_path)  # the previous checkpoint still resumes


def _checkpoint(tmp_path) -> tuple[dict, dict]:
    settings = short_run(checkpoint_dir=str(tmp_path / "good"), checkpoint_every=1)
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
