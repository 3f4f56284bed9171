"""Interventions on disk: our format (JSON + safetensors), peft LoRA adapters, reference files."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .card import CARD_NAME, base_model_id, write_card
from .errors import SplitPluginError
from .fileio import atomic_dir
from .composition import compose
from .intervention import Intervention, InterventionConfig
from .layers import ArchSpec, resolve_layout
from .version import __version__

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "intervention.safetensors"
LIBRARY = "split-plugin"
SAVED_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_intervention(intervention: Intervention, directory: str | Path, card_folder: str | None = None) -> None:
    """Write config.json (form, layer, shapes, version, checksum) and the tensors, atomically."""
    tensors = {name: p.detach().to(torch.float32).cpu().contiguous()
               for name, p in intervention.named_parameters()}
    card = getattr(intervention, "card_data", None)  # method, training data, evaluation
    with atomic_dir(directory, owned=SAVED_FILES, what="saved intervention") as tmp:
        save_file(tensors, str(tmp / WEIGHTS_NAME))
        config = {"library": LIBRARY, **intervention.config.to_dict(), "version": __version__,
                  "tensors": {k: list(v.shape) for k, v in tensors.items()},
                  "sha256": _sha256(tmp / WEIGHTS_NAME), **({"card": card} if card else {})}
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        write_card(tmp, intervention, "split-plugin", folder_name=str(card_folder or directory))


def load_intervention(directory: str | Path) -> Intervention:
    """Load a saved intervention, refusing truncated, corrupted or mismatched files."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not config_path.is_file() or not weights_path.is_file():
        raise SplitPluginError(f"{directory} is not a saved intervention: it needs {CONFIG_NAME} "
                               f"and {WEIGHTS_NAME} (written by Intervention.save_pretrained)")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SplitPluginError(f"{config_path} is not valid JSON ({exc}); the save was "
                               "interrupted or the file was edited: save the intervention again") from None
    if not isinstance(raw, dict):
        raise SplitPluginError(f"{config_path} must hold a JSON object")
    expected_sha = raw.pop("sha256", None)
    shapes = raw.pop("tensors", None)
    raw.pop("library", None)
    card = raw.pop("card", None)
    if expected_sha is not None and _sha256(weights_path) != expected_sha:
        raise SplitPluginError(f"{weights_path} does not match the checksum in {CONFIG_NAME}: the "
                               "file is truncated or from another save; save the intervention again")
    intervention = Intervention(InterventionConfig.from_dict(raw))
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SplitPluginError(f"cannot read {weights_path} ({exc}); it is truncated or corrupted") from None
    _load_state(intervention, state, str(weights_path))
    if isinstance(card, dict):
        intervention.card_data = card
    if isinstance(shapes, dict) and any(list(state[k].shape) != list(v) for k, v in shapes.items() if k in state):
        raise SplitPluginError(f"tensor shapes in {weights_path} differ from {CONFIG_NAME}")
    return intervention


def _load_state(intervention: Intervention, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy tensors into the intervention, naming any missing, extra or misshapen tensor."""
    own = dict(intervention.named_parameters())
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise SplitPluginError(f"{source} does not fit a {intervention.form} intervention: "
                               f"missing tensors {missing}, unexpected tensors {extra}")
    for name, param in own.items():
        if tuple(state[name].shape) != tuple(param.shape):
            raise SplitPluginError(f"{source}: tensor {name} has shape {tuple(state[name].shape)}, "
                                   f"expected {tuple(param.shape)} from the config")
        with torch.no_grad():
            param.copy_(state[name].to(torch.float32))


# -- peft ------------------------------------------------------------------------------------
def _module_name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, mod in model.named_modules() if mod is module)


def export_peft(intervention: Intervention, model: nn.Module, directory: str | Path,
                multiplier: float = 1.0, layout: ArchSpec | Mapping | None = None) -> None:
    """Save the lora form at strength `m` as a peft adapter (PeftModel.from_pretrained loads it).

    The mapping onto peft's tensors is the form's (`LoraForm.peft_tensors`); other forms refuse.
    """
    lora_a, lora_b = intervention.strategy.peft_tensors(intervention, multiplier)
    from peft import LoraConfig

    resolved = resolve_layout(model, layout)
    proj = resolved.down_proj(intervention.layer)
    name = _module_name(model, proj)
    c = intervention.config
    conv1d = type(proj).__name__ == "Conv1D"
    peft_config = LoraConfig(r=c.rank, lora_alpha=c.alpha, target_modules=[name], lora_dropout=0.0,
                             bias="none", fan_in_fan_out=conv1d, task_type="CAUSAL_LM",
                             base_model_name_or_path=getattr(model.config, "_name_or_path", None))
    prefix = f"base_model.model.{name}"
    tensors = {f"{prefix}.lora_A.weight": lora_a, f"{prefix}.lora_B.weight": lora_b}
    with atomic_dir(directory, owned=PEFT_FILES, what="peft adapter") as tmp:
        peft_config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        write_card(tmp, compose((intervention, float(multiplier))), "peft",
                   base_model=base_model_id(model), folder_name=str(directory))


def import_peft(directory: str | Path, model: nn.Module,
                layout: ArchSpec | Mapping | None = None) -> Intervention:
    """Read a peft LoRA adapter that targets one layer's down projection as a lora intervention."""
    directory = Path(directory)
    try:
        cfg = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
        state = load_file(str(directory / "adapter_model.safetensors"))
    except (OSError, json.JSONDecodeError, SafetensorError) as exc:
        raise SplitPluginError(f"{directory} is not a readable peft adapter ({exc})") from None
    a_keys = [k for k in state if k.endswith("lora_A.weight")]
    if len(a_keys) != 1:
        raise SplitPluginError(f"the adapter in {directory} adapts {len(a_keys)} modules; only an "
                               "adapter on one layer's down projection maps onto one intervention")
    resolved = resolve_layout(model, layout)
    module_path = a_keys[0][: -len(".lora_A.weight")]
    for layer in range(resolved.num_layers):
        if module_path.endswith(_module_name(model, resolved.down_proj(layer))):
            break
    else:
        raise SplitPluginError(f"the adapter targets {module_path}, which is not a down projection "
                               "of this model; the unified view needs the MLP down projection")
    rank, alpha = int(cfg["r"]), float(cfg.get("lora_alpha", cfg["r"]))
    intervention = Intervention.for_model(model, "lora", layer, rank=rank, alpha=alpha, layout=layout)
    _load_state(intervention, {"lora_A": state[a_keys[0]].T.contiguous(),
                               "lora_B": state[module_path + ".lora_B.weight"].T.contiguous()},
                str(directory))
    return intervention


# -- the reference implementation's layer_{L}.pt files --------------------------------------
def import_reference(path: str | Path, model: nn.Module, layer: int | None = None,
                     concept_index: int | None = None,
                     layout: ArchSpec | Mapping | None = None) -> Intervention:
    """Load the reference code's saved intervention (`layer_{L}.pt`) into our objects.

    It holds a 1-D steering vector (or a [concepts, hidden] stack), a dict with `lora_A`
    [in, r] / `lora_B` [r, out] (applied unscaled, so alpha = r here), or a dict with
    `weight` [in, out] / `bias` [out].
    """
    path = Path(path)
    if layer is None:
        match = re.search(r"layer_(\d+)", path.name)
        if not match:
            raise SplitPluginError(f"cannot tell the layer from the file name {path.name}; pass layer=")
        layer = int(match.group(1))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad pickle
        raise SplitPluginError(f"cannot read {path} as a reference intervention file ({exc})") from None
    if torch.is_tensor(data):
        if data.ndim == 2:
            if concept_index is None:
                raise SplitPluginError(f"{path.name} stacks {data.shape[0]} concept vectors; pass concept_index=")
            data = data[concept_index]
        new = Intervention.for_model(model, "vector", layer, layout=layout)
        _load_state(new, {"vector": data}, str(path))
    elif isinstance(data, dict) and {"lora_A", "lora_B"} <= set(data):
        rank = int(data["lora_A"].shape[1])
        new = Intervention.for_model(model, "lora", layer, rank=rank, alpha=float(rank), layout=layout)
        _load_state(new, {"lora_A": data["lora_A"], "lora_B": data["lora_B"]}, str(path))
    elif isinstance(data, dict) and {"weight", "bias"} <= set(data):
        new = Intervention.for_model(model, "local_weight", layer, layout=layout)
        _load_state(new, {"delta_weight": data["weight"], "delta_bias": data["bias"]}, str(path))
    else:
        raise SplitPluginError(f"{path.name} holds neither a vector, a lora_A/lora_B dict nor a "
                               "weight/bias dict")
    return new
