"""Our generator and applier in EasyEdit2's calling conventions.

- `generate(hparams, dataset, model=None, dataset_name=None)`: what BaseVectorGenerator calls.
  Trains one Intervention per layer with split_plugin.train and saves it where the framework
  keeps vectors, `<steer_vector_output_dir>/<alg_name>_vector/layer_<L>/` (our format: a
  config.json and intervention.safetensors). Returns {"layer_<L>": Intervention}.
- `apply(hparams, pipline=None, vector=None)`: what BaseVectorApplier calls. Loads those
  folders (or takes `vector`, the generator's return value) and puts each Intervention into
  the framework model's own per-layer intervention slot under alg_name, at the hparams'
  multiplier. The slot adds `m * (x @ dW + db)` (Intervention.delta, the same update our hooks
  add) to the layer output, so the framework's reset_all() and its unsteered
  `generate_orig_output` pass (which set the slots aside) treat it like its own methods.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch

from ..errors import SplitPluginError
from ..intervention import Intervention
from ..layers import ARCH_SPECS, ModelLayout, resolve_layout
from ..steering import check_fits, check_multiplier
from .fields import dataset_pairs, train_config


def vector_dir(root: str, alg_name: str, layer: int) -> str:
    """Where one trained layer is saved: the framework's `<dir>/<alg>_vector/` plus `layer_<L>`."""
    return os.path.join(root, f"{alg_name}_vector", f"layer_{layer}")


def generate(hparams: Any, dataset: Any, model: Any = None, dataset_name: str | None = None) -> dict[str, Intervention]:
    """Train our method named by hparams.alg_name on the framework's dataset, one layer at a time."""
    from ..models import load_model
    from ..trainer import train

    if model is not None:
        raise SplitPluginError(f"{hparams.alg_name}: pass no model; the generator loads "
                               f"model_name_or_path={hparams.model_name_or_path!r} itself")
    values = dataclasses.asdict(hparams)
    configs = [train_config(values, layer) for layer in hparams.layers]  # every error before loading
    pairs = dataset_pairs(dataset, dataset_name)
    hf_model, tokenizer = load_model(hparams.model_name_or_path, dtype=hparams.dtype, device=hparams.device)
    out = {}
    for config in configs:
        intervention = train(hf_model, tokenizer, pairs, config)
        if hparams.save_vectors:
            intervention.save_pretrained(vector_dir(hparams.steer_vector_output_dir, hparams.alg_name, config.layer))
        out[f"layer_{config.layer}"] = intervention
    return out


class Slot:
    """One Intervention at one strength in a framework layer's `intervention_dict`.

    The framework calls `forward(layer_output, **layer_kwargs)`. The weight forms read the
    down projection's input, which the framework's MLP wrapper records as `mid_activations`.
    """

    def __init__(self, intervention: Intervention, multiplier: float, mlp_wrapper: Any):
        self.intervention = intervention
        self.multiplier = check_multiplier(multiplier)
        self.mlp_wrapper = mlp_wrapper

    def forward(self, output: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        x = self.mlp_wrapper.mid_activations if self.intervention.strategy.reads_input else None
        return output + self.intervention.delta(self.multiplier, x=x, like=output).to(output.dtype)

    __call__ = forward


def framework_layout(wrapper: Any) -> ModelLayout:
    """Our layout of the framework's wrapped model (its layers and MLPs sit one `.block`/`.mlp` deeper)."""
    model = wrapper.model
    model_type = getattr(model.config, "model_type", None)
    spec = ARCH_SPECS.get(model_type)
    head, _, rest = spec.down_proj.partition(".") if spec else ("", "", "")
    if spec is None or head != "mlp":
        raise SplitPluginError(f"split_plugin's steer/ applier knows no layout for a {model_type!r} model; use "
                               "a llama/qwen/gemma/mistral-type model, or steer with Intervention.steer directly")
    return resolve_layout(model, dataclasses.replace(spec, down_proj=f"block.mlp.mlp.{rest}"))


def _check_slot(layout: ModelLayout, intervention: Intervention) -> None:
    """Refuse what a slot at the layer output cannot reproduce exactly."""
    check_fits(intervention, layout)
    if not intervention.strategy.reads_input:
        return
    mlp = layout.layer(intervention.layer).block.mlp.mlp
    if layout.post_mlp_norm(intervention.layer) is not None or not (hasattr(mlp, "gate_proj") and hasattr(mlp, "up_proj")):
        raise SplitPluginError(
            f"the {intervention.form} form needs the down projection's input and an output that reaches the "
            f"layer output unchanged; this {layout.model_type} model's MLP does not give both through steer/. "
            "Use the vector form here, or steer with Intervention.steer directly")


def apply(hparams: Any, pipline: Any = None, vector: dict | None = None) -> Any:
    """Put our interventions into the framework's model at hparams.multipliers; returns the model."""
    if len(hparams.multipliers) != len(hparams.layers):
        raise SplitPluginError(f"{hparams.alg_name}: layers {list(hparams.layers)} and multipliers "
                               f"{list(hparams.multipliers)} must have the same length (one multiplier per layer)")
    if pipline is None:
        from steer.models.get_model import get_model
        pipline, _ = get_model(hparams)
    layout = framework_layout(pipline)
    remove(pipline, hparams.alg_name)
    for layer, multiplier in zip(hparams.layers, hparams.multipliers):
        intervention = _load(hparams, layer, vector)
        _check_slot(layout, intervention)
        pipline.set_intervention(layer, Slot(intervention, multiplier, layout.layer(layer).block.mlp), hparams.alg_name)
    return pipline


def _load(hparams: Any, layer: int, vector: dict | None) -> Intervention:
    key = f"layer_{layer}"
    if vector is not None:
        if key not in vector:
            raise SplitPluginError(f"{hparams.alg_name}: the vectors passed hold {sorted(vector)}, not {key}")
        intervention = vector[key]
    else:
        if not hparams.steer_vector_load_dir:
            raise SplitPluginError(f"{hparams.alg_name}: set steer_vector_load_dir to the <alg_name>_vector folder "
                                   "the generator wrote")
        intervention = Intervention.from_pretrained(os.path.join(hparams.steer_vector_load_dir, key))
    if intervention.layer != layer:
        raise SplitPluginError(f"{hparams.alg_name}: {key} holds an intervention for layer {intervention.layer}")
    return intervention


def remove(wrapper: Any, alg_name: str) -> int:
    """Take our slots named alg_name out of every layer (the framework's reset() refuses unknown names)."""
    removed = 0
    for block in wrapper._decoder_layers():
        removed += block.intervention_dict.pop(alg_name, None) is not None
    return removed
