"""Where a decoder's layers, MLP down projections, final norm and LM head live, per architecture."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Union

import torch
from torch import nn

from .errors import SplitPluginError


@dataclass(frozen=True)
class ArchSpec:
    """Dotted paths (from the model root, or from a layer for `down_proj`) of the parts we use.

    `post_mlp_norm` names a norm that sits between the down projection and the residual add
    (Gemma-2/3); there a bias on the down projection is not the same as adding to the layer
    output, so the vector form cannot be folded exactly.
    """

    layers: str
    down_proj: str
    final_norm: tuple[str, ...]
    lm_head: str = "lm_head"
    post_mlp_norm: str | None = None


_LLAMA_LIKE = ArchSpec(layers="model.layers", down_proj="mlp.down_proj", final_norm=("model.norm",))
_GEMMA2_LIKE = replace(_LLAMA_LIKE, post_mlp_norm="post_feedforward_layernorm")

ARCH_SPECS: dict[str, ArchSpec] = {
    **{t: _LLAMA_LIKE for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "phi3",
                                "olmo", "olmo2", "granite", "smollm3", "cohere", "stablelm")},
    **{t: _GEMMA2_LIKE for t in ("gemma2", "gemma3_text")},
    "gemma3": replace(_GEMMA2_LIKE, layers="model.language_model.layers",
                      final_norm=("model.language_model.norm",)),
    "gpt2": ArchSpec(layers="transformer.h", down_proj="mlp.c_proj", final_norm=("transformer.ln_f",)),
    "gpt_neox": ArchSpec(layers="gpt_neox.layers", down_proj="mlp.dense_4h_to_h",
                         final_norm=("gpt_neox.final_layer_norm",)),
    "opt": ArchSpec(layers="model.decoder.layers", down_proj="fc2",
                    final_norm=("model.decoder.final_layer_norm", "model.decoder.project_out")),
}

_LAYER_LIST_NAMES = ("layers", "h", "blocks", "block", "decoder_layers")
_DOWN_PROJ_NAMES = ("down_proj", "c_proj", "dense_4h_to_h", "fc2", "w2", "fc_out", "wo")


def _get(root: nn.Module, path: str) -> nn.Module | None:
    """Follow a dotted attribute path; None where a step is missing or set to None."""
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _linear_dims(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a GPT-2 style Conv1D ([in, out] weight)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        return module.weight.shape[0], module.weight.shape[1]
    raise SplitPluginError(
        f"the down projection is a {type(module).__name__}, not a Linear or Conv1D layer; "
        "pass layout=ArchSpec(...) naming a linear down projection"
    )


@dataclass
class ModelLayout:
    """A model together with the resolved paths of its parts."""

    model: nn.Module
    spec: ArchSpec
    model_type: str
    layers: nn.ModuleList = field(repr=False)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def check_layer(self, index: int) -> int:
        """Return `index` if it names a decoder layer, else raise with the valid range."""
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < self.num_layers:
            raise SplitPluginError(
                f"layer {index!r} is out of range: this {self.model_type} model has "
                f"{self.num_layers} decoder layers, so use a layer in 0..{self.num_layers - 1}"
            )
        return index

    def layer(self, index: int) -> nn.Module:
        return self.layers[self.check_layer(index)]

    def down_proj(self, index: int) -> nn.Module:
        module = _get(self.layer(index), self.spec.down_proj)
        if module is None:
            raise SplitPluginError(
                f"layer {index} of this {self.model_type} model has no '{self.spec.down_proj}'; "
                "pass layout=ArchSpec(...) with the right down_proj path"
            )
        return module

    def mlp(self, index: int) -> nn.Module:
        """The module holding the down projection: the MLP (`mlp` for `mlp.down_proj`), or the layer."""
        parent = self.spec.down_proj.rpartition(".")[0]
        return self.layer(index).get_submodule(parent) if parent else self.layer(index)

    def down_proj_name(self, index: int) -> str:
        """The down projection's dotted name from the model root (what peft's target_modules takes)."""
        self.down_proj(index)
        return f"{self.spec.layers}.{index}.{self.spec.down_proj}"

    def down_proj_dims(self, index: int = 0) -> tuple[int, int]:
        """(in, out) features of the down projection: (intermediate size, hidden size)."""
        return _linear_dims(self.down_proj(index))

    def post_mlp_norm(self, index: int) -> nn.Module | None:
        return _get(self.layer(index), self.spec.post_mlp_norm) if self.spec.post_mlp_norm else None

    @property
    def lm_head(self) -> nn.Module:
        return _get(self.model, self.spec.lm_head) or self.model.get_output_embeddings()

    def final_modules(self) -> list[nn.Module]:
        """The modules between the last decoder layer and the LM head (absent ones skipped)."""
        return [m for m in (_get(self.model, p) for p in self.spec.final_norm) if m is not None]

    def finish(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm, LM head and any logit soft-capping, on hidden states of the last layer."""
        for module in self.final_modules():
            hidden = module(hidden)
        logits = self.lm_head(hidden)
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits


def _guess_spec(model: nn.Module) -> ArchSpec | None:
    """Guess the parts from `named_modules()`: the longest layer list, a down projection in it."""
    candidates = [(name, mod) for name, mod in model.named_modules()
                  if isinstance(mod, nn.ModuleList) and name.split(".")[-1] in _LAYER_LIST_NAMES]
    if not candidates:
        return None
    layers_path, layers = max(candidates, key=lambda item: len(item[1]))
    down = None
    for name, mod in layers[0].named_modules():
        if name.split(".")[-1] in _DOWN_PROJ_NAMES:
            try:
                d_in, d_out = _linear_dims(mod)
            except SplitPluginError:
                continue
            if d_in > d_out:
                down = name
                break
    if down is None:
        return None
    norms = [name for name, mod in model.named_modules()
             if not name.startswith(layers_path) and "norm" in type(mod).__name__.lower()]
    head = next((name for name, mod in model.named_modules()
                 if mod is model.get_output_embeddings()), "lm_head")
    return ArchSpec(layers=layers_path, down_proj=down, final_norm=tuple(norms[-1:]), lm_head=head)


def _spec_from_override(override: ArchSpec | Mapping) -> ArchSpec:
    if isinstance(override, ArchSpec):
        return override
    try:
        spec = dict(override)
        if "final_norm" in spec and isinstance(spec["final_norm"], str):
            spec["final_norm"] = (spec["final_norm"],)
        return ArchSpec(**{**spec, "final_norm": tuple(spec.get("final_norm", ()))})
    except TypeError as exc:
        raise SplitPluginError(
            f"bad layout override {dict(override)!r}: {exc}; valid keys are layers, down_proj, "
            "final_norm, lm_head, post_mlp_norm"
        ) from None


LayoutLike = Union[ArchSpec, Mapping, ModelLayout, None]


def resolve_layout(model: nn.Module, override: LayoutLike = None) -> ModelLayout:
    """Find the decoder layers and their down projections by model type, override, or a guess.

    `override` may be an ArchSpec, a mapping of its fields, or an already resolved ModelLayout
    (returned as is when it is this model's, so callers pass the layout down, not re-resolve).
    """
    if isinstance(override, ModelLayout):
        if override.model is model:
            return override
        override = override.spec
    if not isinstance(model, nn.Module):
        raise SplitPluginError(f"expected a loaded torch model (nn.Module), got {type(model).__name__}; "
                               "load one with split_plugin.models.load_model(path)")
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None) or type(model).__name__
    if override is not None:
        spec = _spec_from_override(override)
    else:
        spec = ARCH_SPECS.get(model_type) or _guess_spec(model)
    if model_type == "opt" and override is None and not getattr(config, "do_layer_norm_before", True):
        spec = replace(spec, post_mlp_norm="final_layer_norm")
    layers = _get(model, spec.layers) if spec is not None else None
    if spec is None or not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise SplitPluginError(
            f"cannot find the decoder layers of this model (model_type={model_type!r}). Looked for "
            f"the known types {sorted(ARCH_SPECS)} and for a ModuleList named one of "
            f"{list(_LAYER_LIST_NAMES)} holding one of {list(_DOWN_PROJ_NAMES)}. Pass "
            "layout={'layers': 'model.layers', 'down_proj': 'mlp.down_proj', "
            "'final_norm': ['model.norm'], 'lm_head': 'lm_head'} with your model's paths"
        )
    layout = ModelLayout(model=model, spec=spec, model_type=model_type, layers=layers)
    layout.down_proj(0)  # fail now, with the message above, if the path is wrong
    return layout
