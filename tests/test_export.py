"""Exports load with stock transformers / peft in a fresh process and match the hooked logits;
the GGUF control vector round-trips through the gguf package; refusals leave nothing behind."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import split_plugin as sp
from split_plugin.composition import compose
from split_plugin.exports import GGUF_NAME, export, read_gguf
from tiny import tiny_model, tiny_tokenizer

HERE = Path(__file__).parent
IDS = [[5, 17, 33, 9, 60, 41, 12, 7], [8, 8, 21, 70, 3, 44, 19, 2]]
TOL = 1e-5


def build(arch):
    """tiny.py's models, plus Granite (its residual_multiplier scales the MLP output)."""
    if arch != "granite":
        return tiny_model(arch)
    from transformers import AutoModelForCausalLM, GraniteConfig

    torch.manual_seed(0)
    config = GraniteConfig(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, residual_multiplier=0.5,
                           pad_token_id=0, bos_token_id=1, eos_token_id=3)
    config._attn_implementation = "eager"
    return AutoModelForCausalLM.from_config(config).eval()


def randomized(model, form, layer, seed, rank=4, scale=0.3):
    """An intervention with random non-zero parameters (as if trained)."""
    torch.manual_seed(seed)
    iv = sp.Intervention.for_model(model, form, layer, rank=rank if form == "lora" else None,
                                   concept="test-concept")
    with torch.no_grad():
        for p in iv.parameters():
            p.copy_(torch.randn_like(p) * scale)
    return iv


def hooked_logits(model, steering, multiplier):
    ids = torch.tensor(IDS)
    handle = (steering.steer(model, multiplier) if isinstance(steering, sp.Intervention)
              else steering.scaled(multiplier).steer(model))
    with torch.no_grad(), handle:
        return model(input_ids=ids).logits.float()


def stock_logits(tmp_path, jobs):
    """Logits from a fresh python that loads each job with stock transformers / peft only."""
    spec = tmp_path / "jobs.json"
    spec.write_text(json.dumps({"input_ids": IDS, "jobs": jobs}))
    out = tmp_path / "logits.safetensors"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    subprocess.run([sys.executable, str(HERE / "stock_logits.py"), str(spec), str(out)],
                   check=True, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    return load_file(str(out))


def state_copy(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before, config_before):
    after = model.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert model.config.to_dict() == config_before


# one fresh process checks every export of this module: (arch, form, layer, multiplier)
CASES = {
    "llama-vector": ("llama", "vector", 1, 4.0),
    "llama-lora": ("llama", "lora", 2, -3.0),
    "llama-local_weight": ("llama", "local_weight", 3, 2.5),
    "gpt2-vector": ("gpt2", "vector", 2, 3.0),
    "gpt_neox-local_weight": ("gpt_neox", "local_weight", 1, 1.5),
    "opt-vector": ("opt", "vector", 1, -2.0),
    "granite-vector": ("granite", "vector", 2, 3.0),
    "qwen2-lora": ("qwen2", "lora", 1, 5.0),
    "gemma2-lora": ("gemma2", "lora", 2, 2.0),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export every case (hf, plus peft for lora) and load them all in one stock process."""
    tmp = tmp_path_factory.mktemp("exports")
    jobs, expected, models = {}, {}, {}
    tok = tiny_tokenizer()
    for name, (arch, form, layer, m) in CASES.items():
        model = build(arch)
        iv = randomized(model, form, layer, seed=len(jobs))
        before, config_before = state_copy(model), model.config.to_dict()
        expected[name] = hooked_logits(model, iv, m)
        export(iv, model, tmp / name, multiplier=m, format="hf", tokenizer=tok)
        jobs[name] = {"hf": str(tmp / name)}
        if form == "lora":
            export(iv, model, tmp / f"{name}-peft", multiplier=m, format="peft")
            jobs[f"{name}-peft"] = {"base": str(tmp / f"{name}-base"), "peft": str(tmp / f"{name}-peft")}
            expected[f"{name}-peft"] = expected[name]
        assert_unchanged(model, before, config_before)
        if form == "lora":
            model.save_pretrained(tmp / f"{name}-base")
        models[name] = (model, iv)
    # a composition: a vector and a local_weight edit on one layer, a lora on another
    model = tiny_model("llama")
    comp = compose((randomized(model, "vector", 1, 10), 2.0), (randomized(model, "local_weight", 1, 11), -1.0),
                   (randomized(model, "lora", 3, 12), 1.5))
    expected["composition"] = hooked_logits(model, comp, 1.0)
    export(comp, model, tmp / "composition", format="hf", tokenizer=tok)
    jobs["composition"] = {"hf": str(tmp / "composition")}
    return tmp, expected, stock_logits(tmp, jobs), models


@pytest.mark.parametrize("name", [*CASES, "llama-lora-peft", "qwen2-lora-peft", "composition"])
def test_stock_loaders_match_the_hooked_logits(exported, name):
    _, expected, got, _ = exported
    diff = (got[name] - expected[name]).abs().max().item()
    assert diff <= TOL, f"{name}: max |stock - hooked| = {diff:.2e}"
    # the edit is visible (the check is not comparing two unsteered models)
    arch = CASES.get(name, ("llama",))[0]
    base = build(arch)(input_ids=torch.tensor(IDS)).logits
    assert (got[name] - base).abs().max().item() > 1e-3


def test_hf_export_folder_holds_config_metadata_tokenizer_and_card(exported):
    tmp, *_ = exported
    folder = tmp / "llama-vector"
    config = json.loads((folder / "config.json").read_text())
    assert config["mlp_bias"] is True  # the encoding of the vector's bias on Llama
    (term,) = config["split_plugin"]["terms"]
    assert term["form"] == "vector" and term["layer"] == 1 and term["multiplier"] == 4.0
    assert (folder / "generation_config.json").is_file()
    assert (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: \"transformers\"" in card and "| 4 (folded in) |" in card
    # gpt2's c_proj already has a bias: no switch is set
    assert "mlp_bias" not in json.loads((tmp / "gpt2-vector" / "config.json").read_text())


def test_peft_adapter_has_the_layout_vllm_reads(exported):
    tmp, *_ = exported
    folder = tmp / "llama-lora-peft"
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["bias"] == "none" and not config.get("modules_to_save")
    assert config["target_modules"] == ["model.layers.2.mlp.down_proj"]
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    # vLLM's loader strips `base_model.model.` and requires the last name part among the
    # model's LoRA-capable modules (down_proj) and lora_A: [r, in], lora_B: [out, r]
    assert sorted(tensors) == ["base_model.model.model.layers.2.mlp.down_proj.lora_A.weight",
                               "base_model.model.model.layers.2.mlp.down_proj.lora_B.weight"]
    assert tensors[sorted(tensors)[0]].shape == (4, 48) and tensors[sorted(tensors)[1]].shape == (32, 4)
    assert (folder / "README.md").read_text().startswith("---\n")


@pytest.mark.parametrize("arch,layer", [("mistral", 1), ("qwen3", 2)])
def test_a_bias_with_no_exact_encoding_is_refused_and_nothing_is_written(tmp_path, arch, layer):
    model = tiny_model(arch)
    before, config_before = state_copy(model), model.config.to_dict()
    iv = randomized(model, "vector", layer, seed=3)
    with pytest.raises(sp.SplitPluginError, match="no exact encoding") as err:
        export(iv, model, tmp_path / "out", multiplier=2.0, format="hf")
    assert "gguf" in str(err.value)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
    assert_unchanged(model, before, config_before)


def test_vector_behind_a_post_mlp_norm_is_refused(tmp_path):
    model = tiny_model("gemma2")
    with pytest.raises(sp.SplitPluginError, match="post_feedforward_layernorm"):
        export(randomized(model, "vector", 1, seed=0), model, tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()


def test_export_refuses_bad_format_and_wrong_model(tmp_path):
    model = tiny_model("llama")
    iv = randomized(model, "vector", 1, seed=0)
    with pytest.raises(sp.SplitPluginError, match="unknown export format"):
        export(iv, model, tmp_path / "o", format="onnx")
    with pytest.raises(sp.SplitPluginError, match="trained on a llama model"):
        export(iv, tiny_model("gpt2"), tmp_path / "o", format="hf")
    with pytest.raises(sp.SplitPluginError, match="one lora intervention"):
        export(iv, model, tmp_path / "o", format="peft")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(sp.SplitPluginError, match="choose a new or empty folder"):
        export(randomized(model, "lora", 1, seed=0), model, tmp_path / "mine", format="peft")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


# -- gguf -------------------------------------------------------------------------------------
def test_gguf_control_vector_round_trips_with_llama_cpp_names(tmp_path):
    import gguf

    model = tiny_model("llama")
    a, b = randomized(model, "vector", 1, seed=1), randomized(model, "vector", 3, seed=2)
    export(compose((a, 3.0), (b, -0.5)), model, tmp_path / "cv", multiplier=2.0, format="gguf")
    path = tmp_path / "cv" / GGUF_NAME
    directions = read_gguf(path)
    assert sorted(directions) == [1, 3]
    assert torch.equal(directions[1], (6.0 * a.vector).detach().float())
    assert torch.equal(directions[3], (-1.0 * b.vector).detach().float())
    reader = gguf.GGUFReader(str(path))
    assert {t.name for t in reader.tensors} == {"direction.1", "direction.3"}
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 and len(t.shape) == 1 for t in reader.tensors)
    field = reader.get_field("general.architecture")
    assert bytes(field.parts[-1]).decode() == "controlvector"
    assert bytes(reader.get_field("controlvector.model_hint").parts[-1]).decode() == "llama"
    assert int(reader.get_field("controlvector.layer_count").parts[-1][0]) == 2
    assert "llama-cli" in (tmp_path / "cv" / "README.md").read_text()


def test_gguf_refuses_layer_zero_and_other_forms(tmp_path):
    model = tiny_model("llama")
    with pytest.raises(sp.SplitPluginError, match="direction.0"):
        export(randomized(model, "vector", 0, seed=0), model, tmp_path / "a", format="gguf")
    with pytest.raises(sp.SplitPluginError, match="vector form only"):
        export(randomized(model, "lora", 1, seed=0), model, tmp_path / "b", format="gguf")
    assert list(tmp_path.iterdir()) == []


def test_cli_export_writes_each_format(tmp_path, monkeypatch, capsys):
    from split_plugin import cli

    model, tok = tiny_model("llama"), tiny_tokenizer()
    monkeypatch.setattr(cli, "_load_model", lambda name: (model, tok))
    randomized(model, "vector", 1, seed=0).save_pretrained(tmp_path / "iv")
    for fmt in ("hf", "gguf"):
        assert cli.main(["export", "--intervention", str(tmp_path / "iv"), "--multiplier", "3",
                         "--format", fmt, "--out", str(tmp_path / fmt)]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    assert read_gguf(tmp_path / "gguf" / GGUF_NAME)[1].abs().sum() > 0
    assert cli.main(["export", "--intervention", str(tmp_path / "iv"), "--multiplier", "3",
                     "--format", "peft", "--out", str(tmp_path / "p")]) == 2
    assert "one lora intervention" in capsys.readouterr().err


@pytest.mark.slow
def test_embedded_model_exports_match_in_a_stock_process(tmp_path):
    """The embedded SmolLM2 (Llama): vector, lora and local_weight exports, stock-loaded.

    The stock logits equal the in-process folded model's to 1e-5. Folding itself reorders fp32
    sums (`(h + mlp) + m v` vs `h + (mlp + m v)`): over 30 layers and logits up to ~33 that
    moves them by ~5e-5, so against the hooks the bound is 1e-5 relative to the logit scale.
    """
    model, tok = sp.load_default_model()
    jobs, hooked, folded = {}, {}, {}
    for seed, (form, m) in enumerate((("vector", 6.0), ("lora", 4.0), ("local_weight", 2.0))):
        iv = randomized(model, form, 10, seed=seed, rank=8, scale=0.05)
        hooked[form] = hooked_logits(model, iv, m)
        iv.fold(model, m)
        with torch.no_grad():
            folded[form] = model(input_ids=torch.tensor(IDS)).logits
        iv.unfold(model)
        export(iv, model, tmp_path / form, multiplier=m, format="hf", tokenizer=tok)
        jobs[form] = {"hf": str(tmp_path / form)}
    got = stock_logits(tmp_path, jobs)
    with torch.no_grad():
        unsteered = model(input_ids=torch.tensor(IDS)).logits
    for form in jobs:
        to_fold = (got[form] - folded[form]).abs().max().item()
        to_hooks = (got[form] - hooked[form]).abs().max().item()
        scale = hooked[form].abs().max().item()
        print(f"{form}: max|stock - folded| = {to_fold:.2e}, max|stock - hooked| = {to_hooks:.2e} "
              f"(max|logit| = {scale:.1f})")
        assert to_fold <= TOL
        assert to_hooks <= TOL * scale
        assert (got[form] - unsteered).abs().max().item() > 1e-1


def test_a_failure_while_writing_leaves_no_folder_and_the_model_as_it_was(tmp_path):
    class BrokenTokenizer:
        def save_pretrained(self, folder):
            raise OSError("disk full")

    model = tiny_model("llama")
    before, config_before = state_copy(model), model.config.to_dict()
    own_config = model.config
    with pytest.raises(OSError, match="disk full"):
        export(randomized(model, "vector", 1, seed=0), model, tmp_path / "out", multiplier=2.0,
               format="hf", tokenizer=BrokenTokenizer())
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temp folder
    assert model.config is own_config
    assert_unchanged(model, before, config_before)
