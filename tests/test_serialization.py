"""Saving, loading, peft export/import and the reference files."""
import json
import os
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from test_intervention import LAYER, ids, logits, make
from tiny import names, randomized, tiny_model

from split_plugin import (FORMS, Intervention, SplitPluginError, export_peft, import_peft,
                          import_reference)
from split_plugin import fileio
from split_plugin import serialization as ser


@pytest.mark.parametrize("form", FORMS)
def test_round_trip(tmp_path, form):
    model = tiny_model("llama")
    iv = make(model, form)
    iv.save_pretrained(tmp_path / "iv")
    back = Intervention.from_pretrained(tmp_path / "iv")
    assert back.config == iv.config
    for (n1, p1), (n2, p2) in zip(iv.named_parameters(), back.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    config = json.loads((tmp_path / "iv" / "config.json").read_text())
    assert config["form"] == form and config["layer"] == LAYER and config["model_type"] == "llama"
    assert "version" in config and "tensors" in config


def test_unknown_key_warns_and_truncated_file_is_refused(tmp_path):
    iv = make(tiny_model("llama"), "vector")
    iv.save_pretrained(tmp_path / "iv")
    cfg_path = tmp_path / "iv" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["from_the_future"] = 1
    cfg_path.write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="from_the_future"):
        Intervention.from_pretrained(tmp_path / "iv")
    weights = tmp_path / "iv" / "intervention.safetensors"
    weights.write_bytes(weights.read_bytes()[:-20])
    with pytest.raises(SplitPluginError, match="truncated"):
        Intervention.from_pretrained(tmp_path / "iv")
    cfg_path.write_text("{not json")
    with pytest.raises(SplitPluginError, match="not valid JSON"):
        Intervention.from_pretrained(tmp_path / "iv")
    with pytest.raises(SplitPluginError, match="is not a saved intervention"):
        Intervention.from_pretrained(tmp_path / "nothing")


def test_failed_save_keeps_previous(tmp_path, monkeypatch):
    import split_plugin.serialization as ser
    model = tiny_model("llama")
    first, second = make(model, "vector", seed=1), make(model, "vector", seed=2)
    first.save_pretrained(tmp_path / "iv")

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ser, "save_file", broken)
    with pytest.raises(OSError):
        second.save_pretrained(tmp_path / "iv")
    monkeypatch.undo()
    back = Intervention.from_pretrained(tmp_path / "iv")
    assert torch.equal(back.vector, first.vector)
    assert [p.name for p in tmp_path.iterdir()] == ["iv"]  # no temp folder left behind


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_peft_export_matches_our_logits_and_imports_back(tmp_path, arch):
    model = tiny_model(arch)
    iv = make(model, "lora")
    x = ids()
    with iv.steer(model, multiplier=1.5):
        ours = logits(model, x)
    export_peft(iv, model, tmp_path / "adapter", multiplier=1.5)
    peft_model = PeftModel.from_pretrained(tiny_model(arch), str(tmp_path / "adapter")).eval()
    assert torch.allclose(logits(peft_model, x), ours, atol=1e-5)
    back = import_peft(tmp_path / "adapter", model)
    with back.steer(model, multiplier=1.0):
        assert torch.allclose(logits(model, x), ours, atol=1e-5)


def test_reference_files_import(tmp_path):
    model = tiny_model("llama")
    vec = torch.randn(32)
    torch.save(vec, tmp_path / "layer_2.pt")
    iv = import_reference(tmp_path / "layer_2.pt", model)
    assert iv.form == "vector" and iv.layer == 2 and torch.equal(iv.vector, vec)

    torch.save(torch.randn(3, 32), tmp_path / "layer_1.pt")
    with pytest.raises(SplitPluginError, match="concept_index"):
        import_reference(tmp_path / "layer_1.pt", model)
    assert import_reference(tmp_path / "layer_1.pt", model, concept_index=2).layer == 1

    a, b = torch.randn(48, 4), torch.randn(4, 32)
    torch.save({"lora_A": a, "lora_B": b, "r": 4, "alpha": 4}, tmp_path / "layer_3.pt")
    lora = import_reference(tmp_path / "layer_3.pt", model)
    x = torch.randn(5, 48)
    assert torch.allclose(x @ lora.delta_weight_matrix(), x @ a @ b, atol=1e-5)  # unscaled as upstream

    w, bias = torch.randn(48, 32), torch.randn(32)
    torch.save({"weight": w, "bias": bias}, tmp_path / "layer_0.pt")
    local = import_reference(tmp_path / "layer_0.pt", model)
    assert torch.equal(local.delta_weight, w) and torch.equal(local.delta_bias, bias)

    torch.save(torch.randn(31), tmp_path / "layer_2.pt")
    with pytest.raises(SplitPluginError, match="shape"):
        import_reference(tmp_path / "layer_2.pt", model)


# -- damaged configs and interrupted saves --------------------------------------------------------
@pytest.mark.usefixtures("one_thread")
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


@pytest.mark.usefixtures("one_thread")
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


@pytest.mark.usefixtures("one_thread")
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
