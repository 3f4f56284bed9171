"""Model cards: a README.md in the Hugging Face convention (YAML front matter, then prose) for
saved interventions and exports, and `push_to_hub` for sharing a folder.

The card states the method, form, layer and strength, the training data when recorded
(`intervention.card_data`, filled by the trainer), any evaluation the caller adds, and how to
load the folder with split_plugin, peft or llama.cpp.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from .errors import SplitPluginError
from .fileio import atomic_write_text

CARD_NAME = "README.md"
LOADERS = {
    "split-plugin": (
        "```python\nimport split_plugin as sp\nmodel, tok = sp.load_default_model()  # or sp.load_model(BASE)\n"
        "intervention = sp.Intervention.from_pretrained(\"{folder}\")\n"
        "M = 4.0  # the strength: `split-steer sweep` measures steering against perplexity\n"
        "with intervention.steer(model, multiplier=M):\n    print(sp.generate(model, tok, \"Hello\"))\n```"),
    "hf": (
        "A plain model folder; the edit is folded into the weights (no split_plugin needed):\n\n"
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "model = AutoModelForCausalLM.from_pretrained(\"{folder}\")\n"
        "tok = AutoTokenizer.from_pretrained(\"{folder}\")\n```\n\n"
        "vLLM: `vllm serve {folder}`."),
    "peft": (
        "```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n"
        "base = AutoModelForCausalLM.from_pretrained(\"{base}\")\n"
        "model = PeftModel.from_pretrained(base, \"{folder}\")\n```\n\n"
        "vLLM (per-request adapter): `vllm serve {base} --enable-lora --max-lora-rank {rank_slot} "
        "--lora-modules steer={folder}`."),
    "gguf": (
        "llama.cpp, with the base model's GGUF:\n\n"
        "```sh\nllama-cli -m BASE.gguf --control-vector {folder}/control_vector.gguf\n"
        "# other strengths: --control-vector-scaled {folder}/control_vector.gguf 0.5\n```"),
}
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py MaxLoRARanks


def model_card(composition, fmt: str, base_model: str | None = None,
               evaluation: Mapping[str, Any] | None = None, folder: str = ".") -> str:
    """The README.md text for `composition` (an intervention or composition) saved as `fmt`."""
    from .composition import as_composition

    composition = as_composition(composition)
    terms = composition.terms
    first = terms[0][0]
    tags = ["split-plugin", "steering", f"{first.form}-intervention"]
    front = {"library_name": "peft" if fmt == "peft" else ("transformers" if fmt == "hf" else "split-plugin"),
             "tags": tags}
    if base_model:
        front["base_model"] = base_model
    lines = ["---", *_yaml(front), "---", "",
             f"# {_title(composition)}", "",
             "A steering edit trained with split-plugin "
             "(SPLIT steering; control = a dynamic weight update of one MLP down projection).", "",
             "| term | method | form | layer | strength (multiplier) | training data |",
             "|---|---|---|---|---|---|"]
    for n, (intervention, multiplier) in enumerate(terms, 1):
        data = getattr(intervention, "card_data", None) or {}
        lines.append(f"| {n} | {data.get('method', 'unrecorded')} | {_form(intervention)} | "
                     f"{intervention.layer} | {_strength(multiplier, fmt)} | {_data(intervention, data)} |")
    if base_model == EMBEDDED_BASE:
        lines += ["", f"Base weights: the embedded {EMBEDDED_BASE} (its Q4_1 GGUF, dequantized to fp32)."]
    lines += ["", *_evaluation(terms, evaluation), "## How to load", "",
              _loader(fmt, first, base_model, folder), ""]
    return "\n".join(lines)


def _yaml(front: Mapping[str, Any]) -> list[str]:
    """Front matter as YAML (JSON scalars are valid YAML and need no yaml import)."""
    out = []
    for key, value in front.items():
        if isinstance(value, list):
            out += [f"{key}:", *(f"- {json.dumps(v)}" for v in value)]
        else:
            out.append(f"{key}: {json.dumps(value)}")
    return out


def _title(composition) -> str:
    concepts = [i.config.concept for i, _ in composition.terms if i.config.concept]
    return " + ".join(dict.fromkeys(concepts)) or "steering intervention"


def _form(intervention) -> str:
    c = intervention.config
    return f"lora (rank {c.rank}, alpha {c.alpha:g})" if c.form == "lora" else c.form


def _strength(multiplier, fmt: str) -> str:
    value = multiplier.tolist() if hasattr(multiplier, "tolist") else float(multiplier)
    if fmt == "split-plugin":
        return "set when applied"
    return f"{value:g} (folded in)" if isinstance(value, float) else str(value)


def _data(intervention, data: Mapping[str, Any]) -> str:
    name = data.get("dataset") or intervention.config.concept or "unrecorded"
    size = data.get("train_pairs")
    return f"{name} ({size} pairs)" if size else str(name)


def _evaluation(terms, evaluation: Mapping[str, Any] | None) -> list[str]:
    """A results section: the caller's numbers, else those recorded with the intervention."""
    rows = dict(evaluation or {})
    for intervention, _ in terms:
        rows.update((getattr(intervention, "card_data", None) or {}).get("evaluation", {}))
    if not rows:
        return ["## Evaluation", "", "Not evaluated: run `split-steer sweep` to measure steering "
                "accuracy and perplexity.", ""]
    table = ["## Evaluation", "", "| metric | value |", "|---|---|"]
    table += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows.items()]
    return table + [""]


def _loader(fmt: str, first, base_model: str | None, folder: str) -> str:
    rank = first.config.rank or 1
    slot = next((r for r in VLLM_RANKS if r >= rank), VLLM_RANKS[-1])
    return LOADERS[fmt].format(folder=folder, base=base_model or "BASE_MODEL", rank_slot=slot)


EMBEDDED_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


def base_model_id(model) -> str | None:
    """The hub id to name as `base_model`: the embedded model's, a hub id, or None for a local folder."""
    name = str(getattr(getattr(model, "config", None), "_name_or_path", "") or "")
    from .gguf_cache import cache_root

    if name and Path(name).resolve().is_relative_to(cache_root().resolve()):
        return EMBEDDED_BASE
    return name if name and not Path(name).exists() and not name.startswith(("/", ".", "~")) else None


def write_card(folder: str | Path, composition, fmt: str, base_model: str | None = None,
               evaluation: Mapping[str, Any] | None = None, folder_name: str | None = None) -> Path:
    """Write README.md into `folder` (atomically); `folder_name` is the path the card quotes."""
    path = Path(folder) / CARD_NAME
    atomic_write_text(path, model_card(composition, fmt, base_model, evaluation,
                                       folder=folder_name or "."))
    return path


def push_to_hub(folder: str | Path, repo_id: str, private: bool = True, token: str | None = None) -> str:
    """Upload a saved or exported folder to the Hugging Face Hub; offline, say what to do instead."""
    folder = Path(folder)
    if not (folder / CARD_NAME).is_file():
        raise SplitPluginError(f"{folder} has no {CARD_NAME}: push a folder written by save_pretrained "
                               "or export")
    if _offline():
        raise SplitPluginError(_offline_message(folder, repo_id))
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise SplitPluginError("push_to_hub needs huggingface_hub: pip install huggingface_hub") from None
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id,
                                 commit_message="Upload with split-plugin")
    except Exception as exc:  # network and auth errors come in many types
        if _is_connection_error(exc):
            raise SplitPluginError(_offline_message(folder, repo_id)) from None
        raise SplitPluginError(f"uploading {folder} to {repo_id} failed: {exc}") from None
    return str(getattr(info, "commit_url", info))


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _is_connection_error(exc: BaseException) -> bool:
    names = {type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e is not None}
    return bool(names & {"ConnectionError", "ConnectError", "ConnectTimeout", "OfflineModeIsEnabled",
                         "ProxyError", "ReadTimeout", "TimeoutException", "NetworkError"})


def _offline_message(folder: Path, repo_id: str) -> str:
    return (f"cannot reach the Hugging Face Hub from here (offline: HF_HUB_OFFLINE is set or there is "
            f"no network), so {folder} was not uploaded to {repo_id}. On a machine with network, "
            f"run `hf auth login` then `hf upload {repo_id} {folder} .` (or call push_to_hub there); "
            "the folder is complete and can be copied as it is")
