"""Model loading: the embedded SmolLM2-135M-Instruct (its GGUF cache is gguf_cache.py) and any
local Hugging Face folder, with dtype/device helpers and no hub access when offline.
"""
from __future__ import annotations

import os
import re
import socket
import urllib.parse
from pathlib import Path
from typing import Any, Union

import torch

from .errors import SplitPluginError
from .gguf_cache import converted_dir, default_gguf_path, ensure_converted, gguf_tokenizer, is_complete

DEFAULT_ALIASES = frozenset({"default", "smollm2-135m-instruct"})
DEFAULT_CONTEXT_LENGTH = 8192  # SmolLM2's max_position_embeddings; the GGUF tokenizer carries no limit
HUB_PROBE_TIMEOUT = 3.0

DTypeLike = Union[torch.dtype, str, None]
DeviceLike = Union[torch.device, str, int, None]

_DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32, "f32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16, "f16": torch.float16,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_CONNECTION_ERRORS = {"ConnectError", "ConnectTimeout", "ConnectionError", "NetworkError",
                      "OfflineModeIsEnabled", "ProxyError", "ReadTimeout", "TimeoutException"}


# ----------------------------------------------------------------------------------------------
# dtype and device


def resolve_dtype(dtype: DTypeLike = None) -> torch.dtype:
    """Map a torch dtype or a name ("float32", "bf16", "fp16", ...) to a floating torch.dtype; None is float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise SplitPluginError(f"dtype {dtype} is not a floating-point type; "
                                   f"use one of {_valid_dtype_names()}")
        return dtype
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key in _DTYPE_NAMES:
            return _DTYPE_NAMES[key]
        if key == "auto":
            raise SplitPluginError("dtype 'auto' means 'the checkpoint's own dtype' and is only valid when "
                                   "loading a model (load_model / load_default_model); pass a concrete "
                                   f"dtype here, one of {_valid_dtype_names()}")
    raise SplitPluginError(f"unknown dtype {dtype!r}; use a torch dtype or one of {_valid_dtype_names()} "
                           "(or 'auto' when loading a model)")


def resolve_device(device: DeviceLike = "cpu") -> torch.device:
    """Turn "cpu"/"cuda"/"cuda:1"/"mps"/"auto"/None into a torch.device that exists on this machine."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device.strip() if isinstance(device, str) else device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise SplitPluginError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'") from e
    _check_device_available(resolved)
    return resolved


def _check_device_available(device: torch.device) -> None:
    """Raise if a CUDA/MPS device is requested that this torch build or machine does not have."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SplitPluginError(f"device {str(device)!r} requested but CUDA is not available "
                                   f"(torch {torch.__version__}); pass device='cpu', or install a CUDA "
                                   "build of torch on a machine with an NVIDIA GPU")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise SplitPluginError(f"device {str(device)!r} requested but only {count} CUDA device(s) "
                                   f"exist; pass device='cuda:0'..'cuda:{count - 1}' or 'cpu'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SplitPluginError(f"device {str(device)!r} requested but MPS is not available here; "
                               "pass device='cpu'")


def _valid_dtype_names() -> str:
    """The accepted dtype names, for error messages."""
    return ", ".join(repr(name) for name in _DTYPE_NAMES)


def _loading_dtype(dtype: DTypeLike) -> torch.dtype | str:
    """Like resolve_dtype, but keep 'auto' (the checkpoint's dtype) for from_pretrained."""
    if isinstance(dtype, str) and dtype.strip().lower() == "auto":
        return "auto"
    return resolve_dtype(dtype)


# ----------------------------------------------------------------------------------------------
# public loaders


def load_default_model(dtype: DTypeLike = torch.float32, device: DeviceLike = "cpu") -> tuple[Any, Any]:
    """The embedded SmolLM2-135M-Instruct (LlamaForCausalLM, 30 layers) and its tokenizer, in eval mode."""
    resolved_device = resolve_device(device)  # fail fast, before a 20 s conversion
    resolved_dtype = _loading_dtype(dtype)
    folder = ensure_converted(default_gguf_path())
    return _load_folder(folder, resolved_dtype, resolved_device, trust_remote_code=False)


def load_default_tokenizer() -> Any:
    """The embedded model's tokenizer only: from the cache when converted (0.2 s), else from the GGUF (3 s)."""
    from transformers import AutoTokenizer

    gguf = default_gguf_path()
    folder = converted_dir(gguf)
    if is_complete(folder):
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    else:
        tokenizer = gguf_tokenizer(gguf)
        tokenizer.model_max_length = DEFAULT_CONTEXT_LENGTH
    return _ensure_pad_token(tokenizer)


def load_model(name_or_path: str | os.PathLike, dtype: DTypeLike = None, device: DeviceLike = "cpu",
               trust_remote_code: bool = False) -> tuple[Any, Any]:
    """Load (model, tokenizer) from 'default', a local HF folder, a local .gguf file, or a hub id (online only).

    dtype None means float32; 'auto' keeps the checkpoint's dtype. The model is returned in eval mode on
    `device`; the tokenizer's pad_token falls back to its eos_token.
    """
    name = os.fspath(name_or_path)
    if name.strip().lower() in DEFAULT_ALIASES:
        return load_default_model(dtype=torch.float32 if dtype is None else dtype, device=device)
    resolved_device = resolve_device(device)
    resolved_dtype = _loading_dtype(dtype)
    path = Path(name).expanduser()
    if path.is_dir():
        return _load_folder(path, resolved_dtype, resolved_device, trust_remote_code)
    if path.is_file() and path.suffix == ".gguf":
        return _load_folder(ensure_converted(path), resolved_dtype, resolved_device, trust_remote_code)
    if path.exists() or not _HUB_ID.match(name) or name.endswith(".gguf"):
        raise SplitPluginError(f"{name!r} is not a Hugging Face model folder, a .gguf file or a hub id; pass a "
                               "folder holding config.json and the weights, or 'default' for the embedded model")
    return _load_hub_id(name, resolved_dtype, resolved_device, trust_remote_code)


def _load_folder(folder: Path, dtype: torch.dtype | str, device: torch.device,
                 trust_remote_code: bool) -> tuple[Any, Any]:
    """Load model and tokenizer from a local folder, without touching the network."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (folder / "config.json").is_file():
        raise SplitPluginError(f"{folder} has no config.json, so it is not a Hugging Face model folder; "
                               "save one with model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR)")
    no_network = {"local_files_only": True, "adapter_kwargs": {"local_files_only": True}}
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=trust_remote_code,
                                                 **no_network)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code,
                                                  local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SplitPluginError(f"{folder} has no usable tokenizer; save it there too with "
                               f"tokenizer.save_pretrained(DIR) (transformers said: {reason})") from e
    return _finish(model, tokenizer, device)


def _finish(model: Any, tokenizer: Any, device: torch.device) -> tuple[Any, Any]:
    """Move to the device, set eval mode, and give the tokenizer (and generation) a pad token."""
    _ensure_pad_token(tokenizer)
    generation = getattr(model, "generation_config", None)
    if generation is not None and generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


def _ensure_pad_token(tokenizer: Any) -> Any:
    """Set pad_token to eos_token when the tokenizer has none (batched scoring needs one)."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ----------------------------------------------------------------------------------------------
# hub ids: the local HF cache when offline, a download only when the hub is reachable


def _load_hub_id(model_id: str, dtype: torch.dtype | str, device: torch.device,
                 trust_remote_code: bool) -> tuple[Any, Any]:
    """Load a hub id: from the local HF cache when offline or unreachable, else download it."""
    if _hub_offline() or not _hub_reachable():
        snapshot = _cached_snapshot(model_id)
        if snapshot is None:
            raise SplitPluginError(_offline_message(model_id))
        return _load_folder(snapshot, dtype, device, trust_remote_code)
    try:
        return _download_and_load(model_id, dtype, device, trust_remote_code)
    except SplitPluginError:
        raise
    except Exception as e:  # transformers wraps hub failures in OSError; inspect the cause chain
        if _is_connection_error(e):
            raise SplitPluginError(_offline_message(model_id)) from e
        raise SplitPluginError(f"could not load {model_id!r} from the Hugging Face hub: {e}") from e


def _download_and_load(model_id: str, dtype: torch.dtype | str, device: torch.device,
                       trust_remote_code: bool) -> tuple[Any, Any]:
    """Download (or reuse the HF cache for) a hub id with transformers; only called when online."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    return _finish(model, tokenizer, device)


def _hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set to a true value now."""
    return any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """A quick TCP probe of the hub endpoint, so an offline machine fails in seconds, not after retries."""
    endpoint = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _cached_snapshot(model_id: str) -> Path | None:
    """The folder of a hub id already in the local HF cache (a pure file lookup), or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model_id, "config.json")
    return Path(found).parent if isinstance(found, str) else None


def _is_connection_error(error: BaseException) -> bool:
    """Whether a (wrapped) exception comes from a failed connection or offline mode."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (ConnectionError, TimeoutError, socket.gaierror)):
            return True
        if type(error).__name__ in _CONNECTION_ERRORS or "couldn't connect" in str(error).lower():
            return True
        error = error.__cause__ or error.__context__
    return False


def _offline_message(model_id: str) -> str:
    """The error text for a hub id that cannot be fetched offline, with the two ways out."""
    return (f"{model_id!r} is not a local folder and the Hugging Face hub id could not be fetched offline "
            "(HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set or the hub is unreachable, and it is not in the "
            f"local HF cache). Download it on a connected machine with `hf download {model_id} "
            "--local-dir DIR` (huggingface_hub's CLI; releases before 0.34 call it `huggingface-cli "
            "download`), copy DIR here and pass DIR, or use load_default_model() for the embedded "
            "SmolLM2-135M-Instruct.")
