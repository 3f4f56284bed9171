"""Exports that inference engines load without split_plugin: `hf`, `peft` and `gguf`.

- `hf`: a plain Hugging Face model folder with `W + m dW` and `b + m db` written into the down
  projections. Where the down projection has no bias, the config switch that gives it one is
  set (`mlp_bias: true` for Llama-style models, with zero biases for the other MLP
  projections it adds); an architecture with no such switch is refused, never approximated.
- `peft`: the lora form as a peft adapter (safetensors; the layout vLLM's LoRA loader reads).
- `gguf`: the vector form as a llama.cpp control vector, `direction.<L>` = `m * v` (F32, 1-D).

Every export goes to a new folder, written atomically, with a model card (README.md); the
user's model is only read.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .card import base_model_id, write_card
from .composition import Composition, Steering, as_composition, layer_updates
from .errors import SplitPluginError
from .fileio import atomic_dir
from .steering import Multiplier
from .layers import ArchSpec, ModelLayout, resolve_layout
from .version import __version__

FORMATS = ("hf", "peft", "gguf")
# model types whose config has a switch giving the MLP projections a bias that stock
# transformers (and vLLM's implementation of the same model) builds and loads
MLP_BIAS_SWITCH = {"llama": "mlp_bias", "granite": "mlp_bias", "smollm3": "mlp_bias"}
# names llama.cpp's converter gives the architectures (controlvector.model_hint)
LLAMA_CPP_ARCH = {"gpt_neox": "gptneox", "gemma3_text": "gemma3", "mistral": "llama", "mixtral": "llama"}
GGUF_NAME = "control_vector.gguf"
METADATA_KEY = "split_plugin"


def export(steering: Steering, model: nn.Module, out: str | Path, multiplier: Multiplier = 1.0,
           format: str = "hf", tokenizer=None, layout: ArchSpec | Mapping | None = None) -> Path:
    """Write `steering` at strength `multiplier` to the new folder `out` and return its path.

    `steering` is an Intervention (at m = `multiplier`) or a Composition (each term's own m,
    times `multiplier`); `tokenizer`, when given, is saved beside an `hf` export.
    """
    if format not in FORMATS:
        raise SplitPluginError(f"unknown export format {format!r}; use one of {FORMATS}")
    composition = as_composition(steering, multiplier)
    writer = {"hf": export_hf, "peft": _export_peft, "gguf": export_gguf}[format]
    return writer(composition, model, out, tokenizer=tokenizer, layout=layout)


# -- hf ----------------------------------------------------------------------------------------
def export_hf(composition: Composition, model: nn.Module, out: str | Path, tokenizer=None,
              layout: ArchSpec | Mapping | None = None) -> Path:
    """A model folder `AutoModelForCausalLM.from_pretrained` loads, with the edit folded in."""
    resolved = resolve_layout(model, layout)
    updates = layer_updates(composition)
    _check_terms(composition, resolved)
    state = dict(model.state_dict())  # references: nothing of the model is modified
    switch = _needs_bias_switch(resolved, updates)
    if switch:
        state.update(_zero_mlp_biases(model, resolved))
    for layer, update in updates.items():
        _write_layer(model, resolved, state, layer, update)
    config = copy.deepcopy(model.config)
    if switch:
        setattr(config, switch, True)
    setattr(config, METADATA_KEY, _metadata(composition))
    with atomic_dir(out, what="hf export") as tmp:
        _save_with_config(model, config, tmp, state)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        write_card(tmp, composition, "hf", base_model=base_model_id(model), folder_name=str(out))
    return Path(out)


def _save_with_config(model: nn.Module, config, folder: Path, state: dict) -> None:
    """`save_pretrained` with the export's config (it writes into the config it saves, so the
    user's model keeps its own)."""
    own = model.config
    model.config = config
    try:
        model.save_pretrained(str(folder), state_dict=state, safe_serialization=True)
    finally:
        model.config = own


def _check_terms(composition: Composition, layout: ModelLayout) -> None:
    """Every term fits the model; a vector behind a post-MLP norm has no exact weight encoding."""
    _check_fit(composition, layout)
    for intervention, _ in composition.terms:
        if intervention.form == "vector" and layout.post_mlp_norm(intervention.layer) is not None:
            raise SplitPluginError(
                f"the vector form cannot be written exactly into a {layout.model_type} model's weights: "
                f"a norm ({layout.spec.post_mlp_norm}) follows the down projection. Export it as "
                "format='gguf' (llama.cpp adds it after the layer, as split_plugin does) or steer with hooks")


def _check_fit(composition: Composition, layout: ModelLayout) -> None:
    """Each term's layer, shapes and model type match the model (hooking checks them, naming the fix)."""
    with composition.steer(layout.model, layout=layout, scale=0.0):
        pass


def _needs_bias_switch(layout: ModelLayout, updates: dict) -> str | None:
    """The config key to set so the down projections get a bias, or None when none is needed."""
    biased = [layer for layer, u in updates.items() if _nonzero(u.get("v")) or _nonzero(u.get("db"))]
    missing = [layer for layer in biased if layout.down_proj(layer).bias is None]
    if not missing:
        return None
    switch = MLP_BIAS_SWITCH.get(layout.model_type)
    if switch is None:
        raise SplitPluginError(
            f"a {layout.model_type} model's down projection has no bias, and its config has no switch "
            f"that adds one stock transformers loads, so the bias part (m * db) of the edit at layer "
            f"{missing[0]} has no exact encoding in a plain Hugging Face folder. Exact exports here: "
            f"a lora intervention (format='hf' or 'peft'), a vector as format='gguf' (llama.cpp); "
            f"with hooks, split_plugin serves any form. Architectures with an exact bias encoding: "
            f"{sorted(MLP_BIAS_SWITCH)} (config switch) and gpt2, gpt_neox, opt (biased projections)")
    return switch


def _nonzero(tensor: torch.Tensor | None) -> bool:
    return tensor is not None and bool(tensor.ne(0).any())


def _zero_mlp_biases(model: nn.Module, layout: ModelLayout) -> dict[str, torch.Tensor]:
    """Zero biases for every linear layer in every MLP that lacks one (what `mlp_bias` adds)."""
    names = {id(mod): name for name, mod in model.named_modules()}
    extra = {}
    for layer in range(layout.num_layers):
        mlp = layout.mlp(layer)
        for sub in mlp.modules():
            if isinstance(sub, nn.Linear) and sub.bias is None:
                key = f"{names[id(sub)]}.bias"
                extra[key] = torch.zeros(sub.out_features, dtype=sub.weight.dtype)
    return extra


def _write_layer(model: nn.Module, layout: ModelLayout, state: dict, layer: int, update: dict) -> None:
    """Replace the down projection's weight and bias in `state` with the folded ones."""
    proj = layout.down_proj(layer)
    name = next(n for n, mod in model.named_modules() if mod is proj)
    weight = proj.weight.detach()
    if "dW" in update:
        dw = update["dW"] if type(proj).__name__ == "Conv1D" else update["dW"].T
        state[f"{name}.weight"] = (weight.float() + dw.to(weight.device)).to(weight.dtype)
    # Granite scales the MLP output by residual_multiplier before the residual add; the vector
    # is added after it, so its share of the bias is divided by that factor
    vector_scale = 1.0 / getattr(model.config, "residual_multiplier", 1.0) if layout.model_type == "granite" else 1.0
    db = sum(update[k] * (vector_scale if k == "v" else 1.0) for k in ("v", "db") if k in update)
    if torch.is_tensor(db):
        base = state.get(f"{name}.bias")
        base = base.detach().float() if base is not None else torch.zeros_like(db)
        state[f"{name}.bias"] = (base + db.to(base.device)).to(weight.dtype)


def _metadata(composition: Composition) -> dict:
    """What was folded in, recorded in the exported config (`config.split_plugin`)."""
    return {"library": "split-plugin", "version": __version__, "terms": composition.describe()}


# -- peft --------------------------------------------------------------------------------------
def _export_peft(composition: Composition, model: nn.Module, out: str | Path, tokenizer=None,
                 layout: ArchSpec | Mapping | None = None) -> Path:
    """One lora intervention as a peft adapter, B scaled by m (see serialization.export_peft)."""
    from .serialization import export_peft

    if len(composition.terms) != 1 or composition.terms[0][0].form != "lora":
        forms = [i.form for i, _ in composition.terms]
        raise SplitPluginError(
            f"format='peft' takes one lora intervention, got {forms}; export a composition with "
            "format='hf', or add lora interventions of one layer first (a + b)")
    intervention, multiplier = composition.terms[0]
    if torch.is_tensor(multiplier) and multiplier.ndim > 0:
        raise SplitPluginError("a peft adapter holds one strength; give one number as the multiplier")
    export_peft(intervention, model, out, multiplier=float(multiplier), layout=layout)
    return Path(out)


# -- gguf --------------------------------------------------------------------------------------
def export_gguf(composition: Composition, model: nn.Module, out: str | Path, tokenizer=None,
                layout: ArchSpec | Mapping | None = None) -> Path:
    """A llama.cpp control vector: `direction.<L>` = the summed `m * v` of the vector terms at L.

    llama.cpp adds `direction.<il>` to the output of block `il` (0-based, after the FFN
    residual add), which is where the vector form is hooked, so our layer L is its `il`;
    block 0 has no slot in llama.cpp (`direction.0` is refused), so layer 0 is refused here.
    """
    import gguf

    resolved = resolve_layout(model, layout)
    forms = sorted({i.form for i, _ in composition.terms})
    if forms != ["vector"]:
        raise SplitPluginError(f"format='gguf' holds control vectors, i.e. the vector form only, got "
                               f"{forms}; export lora / local_weight edits with format='hf'")
    _check_fit(composition, resolved)
    directions = {layer: u["v"] for layer, u in sorted(layer_updates(composition).items())}
    if 0 in directions:
        raise SplitPluginError("llama.cpp control vectors cannot steer layer 0 (it refuses a "
                               "'direction.0' tensor); train the vector at layer 1 or later, or "
                               "export it with format='hf'")
    arch = LLAMA_CPP_ARCH.get(resolved.model_type, resolved.model_type)
    with atomic_dir(out, what="gguf export") as tmp:
        writer = gguf.GGUFWriter(str(tmp / GGUF_NAME), "controlvector")
        writer.add_string("controlvector.model_hint", arch)
        writer.add_int32("controlvector.layer_count", len(directions))
        writer.add_string(f"{METADATA_KEY}.terms", json.dumps(composition.describe()))
        for layer, vector in directions.items():
            writer.add_tensor(f"direction.{layer}", vector.numpy().astype("float32"))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        write_card(tmp, composition, "gguf", base_model=base_model_id(model), folder_name=str(out))
    return Path(out)


def read_gguf(path: str | Path) -> dict[int, torch.Tensor]:
    """The `direction.<L>` tensors of a control-vector file, by layer (for checks and round trips)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {int(t.name.split(".", 1)[1]): torch.tensor(t.data.copy())
            for t in reader.tensors if t.name.startswith("direction.")}
