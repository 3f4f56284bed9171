"""SPLIT (and our CAA, SFT and RePS) as methods of EasyEdit2, the `steer/` part of EasyEdit's git version.

    import split_plugin.easyedit2 as se2
    se2.register()                  # adds split_plugin_split / _caa / _sft / _reps to steer's registries
    # then steer's own pipeline, e.g. with a method file holding `alg_name: split_plugin_split`:
    BaseVectorGenerator(top_cfg).generate_vectors(datasets)
    applier = BaseVectorApplier(top_cfg); applier.apply_vectors(); applier.generate(datasets)
    se2.log_odds_report(applier.model, pairs_dataset)   # our log-odds, steered and unsteered

Importing this package imports neither `steer` nor `easyeditor`; `register()` imports steer.
The framework's hparams fields map onto TrainConfig as fields.py says; the generator saves our
format under the framework's vector folders and the applier puts the intervention into the
framework model's per-layer slot (methods.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from .evaluation import log_odds_report
from .fields import APPLY_FIELDS, METHODS, TRAIN_FIELDS, dataset_pairs, train_config
from .methods import Slot, apply, framework_layout, generate, remove, vector_dir

__all__ = ["METHODS", "Slot", "apply", "dataset_pairs", "framework_layout", "generate", "hparams_class",
           "log_odds_report", "register", "remove", "train_config", "vector_dir"]


def hparams_class(base: type, alg_name: str, phase: str) -> type:
    """The framework hparams dataclass of one of our methods ("train" or "apply"), on steer's HyperParams."""
    specs = TRAIN_FIELDS if phase == "train" else APPLY_FIELDS
    fields = []
    for name, annotation, default in specs:
        default = alg_name if name == "alg_name" else default
        if isinstance(default, tuple):
            fields.append((name, annotation, dataclasses.field(default_factory=lambda d=default: list(d))))
        else:
            fields.append((name, annotation, dataclasses.field(default=default)))
    title = "".join(part.title() for part in alg_name.split("_"))
    return dataclasses.make_dataclass(f"{title}{'Apply' if phase == 'apply' else ''}HyperParams", fields,
                                      bases=(base,), namespace={"__module__": __name__})


def register(repair: bool = False) -> list[str]:
    """Add our methods to steer's registries (idempotent); returns their names.

    Entries go into HYPERPARAMS_CLASS_DICT and METHODS_CLASS_DICT (steer/utils/alg_dict.py) and
    the generator's REQUIRED_DATASET_METHODS list (without it BaseVectorGenerator calls a
    generator with no dataset). `repair=True` first applies host.expose_packages(), which the
    git head needs before its alg_dict imports at all (see host.py).
    """
    from . import host

    if repair:
        host.expose_packages()
    registry = host.registries()
    from steer.utils.hparams import HyperParams
    from steer.vector_generators import vector_generators

    for name in METHODS:
        if registry.METHODS_CLASS_DICT.get(name, {}).get("train") is not generate:
            registry.HYPERPARAMS_CLASS_DICT[name] = {"train": hparams_class(HyperParams, name, "train"),
                                                     "apply": hparams_class(HyperParams, name, "apply")}
            registry.METHODS_CLASS_DICT[name] = {"train": generate, "apply": apply}
        if name not in vector_generators.REQUIRED_DATASET_METHODS:
            vector_generators.REQUIRED_DATASET_METHODS.append(name)
    return sorted(METHODS)


def registered_class(alg_name: str, phase: str) -> Any:
    """The hparams class steer's registry holds for one of our methods (after register())."""
    from .host import registries

    return registries().HYPERPARAMS_CLASS_DICT[alg_name][phase]
