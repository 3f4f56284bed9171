"""Saving, loading, peft export/import and the reference files."""
import json

import pytest
import torch
from peft import PeftModel
from test_intervention import LAYER, ids, logits, make
from tiny import tiny_model

from split_plugin import (FORMS, Intervention, SplitPluginError, export_peft, import_peft,
                          import_reference)


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
