"""EasyEdit2 (`steer/`) hyperparameters and datasets in our terms, without importing `steer`.

The framework's SPLIT-family hparams name training settings its own way (n_epochs,
gradient_accumulation_steps, margin_penalty_weight, intervention_method, ...). `train_config`
maps them onto a TrainConfig; a value we cannot honour (another intervention place, clamping,
a preference_pairs list we do not train) is refused with its name, and any TrainConfig setting
without a framework name goes under `split_plugin:` in the method file, checked key by key.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..config import TrainConfig
from ..errors import SplitPluginError
from ..pairs import ContrastivePair

#: registry key -> TrainConfig.method
METHODS = {"split_plugin_split": "split", "split_plugin_caa": "caa",
           "split_plugin_sft": "sft", "split_plugin_reps": "reps"}

#: the framework's field name -> ours (same meaning, same value)
RENAMED = {"lr": "lr", "n_epochs": "epochs", "batch_size": "batch_size",
           "gradient_accumulation_steps": "grad_accum", "weight_decay": "weight_decay", "dropout": "dropout",
           "pos_loss_weight": "pos_weight", "neg_loss_weight": "neg_weight",
           "margin_penalty_weight": "margin_weight", "margin_threshold": "margin",
           "intervention_method": "form", "low_rank_dimension": "rank", "lora_alpha": "alpha",
           "steering_factors": "factors", "output_length": "max_length", "seed": "seed", "device": "device"}

#: framework fields that only take the one value our trainer implements
FIXED = {"intervention_components": "mlp_mid", "intervention_type": "addition", "intervention_positions": "all"}

#: preference_pairs -> sub_rows (our "add" rows always; "sub" rows swap the roles at -m)
PREFERENCE_PAIRS = {("orig_add",): False, ("orig_add", "orig_sub"): True}

#: settings we derive (from use_chat_template, system_prompt) that `split_plugin:` may override
DERIVED = {"progress", "prompt_format", "system_prompt"}

#: (name, annotation, default) of the generator's fields beyond the framework's HyperParams;
#: None means "TrainConfig's default"
TRAIN_FIELDS: tuple[tuple[str, Any, Any], ...] = (
    ("alg_name", str, "split_plugin_split"),
    ("layers", list, (15,)),
    ("save_vectors", bool, True),
    ("steer_vector_output_dir", str, "../"),
    ("steer_train_dataset", Any, None),
    *((name, Any, None) for name in RENAMED if name not in ("seed", "device")),
    *((name, Any, None) for name in FIXED),
    ("preference_pairs", Any, None),
    ("split_plugin", Any, None),
)

APPLY_FIELDS: tuple[tuple[str, Any, Any], ...] = (
    ("alg_name", str, "split_plugin_split"),
    ("layers", list, (15,)),
    ("multipliers", list, (1.0,)),
    ("steer_vector_load_dir", Any, None),
)


def train_config(values: Mapping[str, Any], layer: int) -> TrainConfig:
    """The TrainConfig for one layer from the generator's hparams (as a dict of its fields)."""
    alg = values.get("alg_name")
    if alg not in METHODS:
        raise SplitPluginError(f"alg_name {alg!r} is not one of ours; use one of {sorted(METHODS)}")
    settings: dict[str, Any] = {"method": METHODS[alg], "layer": layer, "progress": False}
    for theirs, ours in RENAMED.items():
        if values.get(theirs) is not None:
            settings[ours] = values[theirs]
    for name, only in FIXED.items():
        if values.get(name) not in (None, only):
            raise SplitPluginError(f"{alg}: {name}={values[name]!r} is not supported; split_plugin trains "
                                   f"{name}={only!r} only (remove the key or set it to {only!r})")
    pairs = values.get("preference_pairs")
    if pairs is not None:
        key = tuple(pairs)
        if key not in PREFERENCE_PAIRS:
            raise SplitPluginError(f"{alg}: preference_pairs={list(pairs)!r} is not supported; use "
                                   f"{[list(k) for k in PREFERENCE_PAIRS]}")
        settings["sub_rows"] = PREFERENCE_PAIRS[key]
    settings["system_prompt"] = values.get("system_prompt") or None
    settings["prompt_format"] = "chat" if values.get("use_chat_template") else "plain"
    extra = values.get("split_plugin") or {}
    if not isinstance(extra, Mapping):
        raise SplitPluginError(f"{alg}: split_plugin must be a mapping of TrainConfig settings, got {extra!r}")
    clash = sorted(set(extra) & set(settings) - DERIVED)
    if clash:
        raise SplitPluginError(f"{alg}: {clash} set twice (by a framework field and under split_plugin:); "
                               "keep one")
    return TrainConfig.from_dict({**settings, **extra}, source=f"{alg} hparams (split_plugin: keys)")


def dataset_pairs(dataset: Sequence[Any], name: str | None = None) -> list[ContrastivePair]:
    """The framework's training items ({question, matching, not_matching}) as our pairs."""
    where = f"dataset {name!r}" if name else "the dataset"
    if not isinstance(dataset, Sequence) or isinstance(dataset, (str, bytes)) or not dataset:
        raise SplitPluginError(f"{where} must be a non-empty list of items, got {type(dataset).__name__}")
    if isinstance(dataset[0], tuple):
        raise SplitPluginError(f"{where} is multi-concept (grouped by concept_id); split_plugin trains one "
                               "concept per run: pass that concept's items as their own dataset")
    pairs = []
    for i, item in enumerate(dataset):
        missing = [k for k in ("question", "matching", "not_matching") if not isinstance(item.get(k), str)]
        if missing:
            raise SplitPluginError(f"{where}, item {i}: no string {missing} (has {sorted(item)}); our methods "
                                   "need a question with a matching and a not_matching answer")
        pairs.append(ContrastivePair(question=item["question"], positive=item["matching"],
                                     negative=item["not_matching"], concept=item.get("concept")))
    return pairs
