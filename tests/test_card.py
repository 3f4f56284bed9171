"""Model cards written by save_pretrained and export; push_to_hub offline says what to do."""
import pytest
import torch
import yaml

import split_plugin as sp
from split_plugin.card import model_card, push_to_hub
from split_plugin.composition import compose


def front_matter(text):
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_save_pretrained_writes_a_card_with_training_data_and_evaluation(llama, tmp_path):
    iv = sp.Intervention.for_model(llama, "lora", 2, rank=4, concept="optimism")
    iv.card_data = {"method": "split", "train_pairs": 96,
                    "evaluation": {"steering accuracy": 0.83, "perplexity increase": 0.3}}
    iv.save_pretrained(tmp_path / "iv")
    text = (tmp_path / "iv" / "README.md").read_text()
    meta = front_matter(text)
    assert meta["library_name"] == "split-plugin" and "steering" in meta["tags"]
    assert "| 1 | split | lora (rank 4, alpha 4) | 2 |" in text
    assert "optimism (96 pairs)" in text and "| steering accuracy | 0.83 |" in text
    assert "sp.Intervention.from_pretrained" in text
    loaded = sp.Intervention.from_pretrained(tmp_path / "iv")  # the card data round-trips
    assert loaded.card_data["train_pairs"] == 96
    iv.save_pretrained(tmp_path / "iv")  # a previous save with its card is replaced


def test_train_records_method_and_pair_count(llama, tok):
    pairs = sp.load_pairs("power-seeking", limit=4)
    iv = sp.train(llama, tok, pairs, {"method": "caa", "form": "vector", "layer": 1, "batch_size": 2})
    assert iv.card_data == {"method": "caa", "train_pairs": 4}
    assert "caa | vector | 1 |" in model_card(iv, "split-plugin")


def test_card_of_a_composition_and_of_an_unevaluated_export(llama):
    a = sp.Intervention.for_model(llama, "vector", 1, concept="optimism")
    b = sp.Intervention.for_model(llama, "vector", 3, concept="calm")
    text = model_card(compose((a, 4.0), (b, -1.0)), "gguf", base_model="HuggingFaceTB/SmolLM2-135M-Instruct")
    meta = front_matter(text)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "# optimism + calm" in text and "| 4 (folded in) |" in text and "| -1 (folded in) |" in text
    assert "Not evaluated" in text and "--control-vector" in text


def test_push_to_hub_offline_says_what_to_run(llama, tmp_path, monkeypatch):
    iv = sp.Intervention.for_model(llama, "vector", 1)
    iv.save_pretrained(tmp_path / "iv")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(sp.SplitPluginError, match="offline") as err:
        push_to_hub(tmp_path / "iv", "me/steer")
    assert "hf upload me/steer" in str(err.value)
    with pytest.raises(sp.SplitPluginError, match="has no README.md"):
        push_to_hub(tmp_path, "me/steer")


def test_push_to_hub_without_network_says_what_to_run(llama, tmp_path, monkeypatch):
    import huggingface_hub

    class NoNetwork:
        def __init__(self, token=None):
            pass

        def create_repo(self, *a, **k):
            raise ConnectionError("no route to host")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "HfApi", NoNetwork)
    sp.Intervention.for_model(llama, "vector", 1).save_pretrained(tmp_path / "iv")
    with pytest.raises(sp.SplitPluginError, match="hf upload me/steer"):
        push_to_hub(tmp_path / "iv", "me/steer")


def test_push_to_hub_uploads_the_folder(llama, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create", repo_id, private))

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls.append(("upload", folder_path, repo_id))
            return type("Info", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    sp.Intervention.for_model(llama, "vector", 1).save_pretrained(tmp_path / "iv")
    assert push_to_hub(tmp_path / "iv", "me/steer") == "https://hub/me/steer/commit/1"
    assert calls == [("create", "me/steer", True), ("upload", str(tmp_path / "iv"), "me/steer")]


def test_base_model_is_a_hub_id_or_left_out(llama, tmp_path):
    from split_plugin.card import base_model_id

    assert base_model_id(llama) is None  # built from a config: no name
    llama.config._name_or_path = "Qwen/Qwen2.5-0.5B"
    assert base_model_id(llama) == "Qwen/Qwen2.5-0.5B"
    llama.config._name_or_path = str(tmp_path)  # a local folder is not a hub id
    assert base_model_id(llama) is None
