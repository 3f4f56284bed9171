"""Run EasyEdit's own SPLIT trainer ("spilt" in its `steer/` framework) from a user's checkout.

Nothing of EasyEdit is copied here: the checkout is put on `sys.path` and its public pieces are
called (`SpiltHyperParams`, `get_model`, `generate_spilt`). Two things make its head importable
for this one trainer, without its other methods' dependencies:

- `steer/utils/alg_dict.py` imports every generator and applier by name from
  `steer.vector_generators` / `steer.vector_appliers`, whose `__init__` files export nothing at
  the head. We register stand-in packages under those names that keep the real `__path__` (so
  `steer.vector_generators.spilt` still loads from the checkout) and bind each imported name to
  None, read from alg_dict.py itself so a new method upstream needs no change here.
- The reference picks its model wrapper by substrings of the model path, so the embedded model's
  folder is reached through a symlink whose name contains "llama".

Its own requirements (datasets, einops, omegaconf, ...) come from requirements-reference.txt,
installed for this benchmark only.
"""
from __future__ import annotations

import contextlib
import io
import re
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

STAND_INS = ("vector_generators", "vector_appliers")


@dataclass
class ReferenceRun:
    """Settings shared with our trainer, in the reference's terms."""

    layer: int
    batch_size: int
    epochs: int
    factors: Sequence[float]
    sub_rows: bool
    lr: float = 0.08
    pos_weight: float = 1.0
    neg_weight: float = 0.5
    margin_weight: float = 5.0
    margin: float = 0.5
    seed: int = 42


def check_checkout(checkout: Path) -> Path:
    """The checkout's root, refused with a clear message if it lacks the SPLIT trainer."""
    checkout = Path(checkout).expanduser().resolve()
    trainer = checkout / "steer" / "vector_generators" / "spilt" / "generate_spilt.py"
    if not trainer.is_file():
        raise SystemExit(f"--reference-checkout {checkout}: no steer/vector_generators/spilt/generate_spilt.py "
                         "there; pass the root of a zjunlp/EasyEdit clone or `git archive` export")
    return checkout


def _imported_names(alg_dict: Path, package: str) -> list[str]:
    """The names that alg_dict.py imports from `..{package}`."""
    text = alg_dict.read_text(encoding="utf-8")
    names: list[str] = []
    for block in re.findall(rf"from \.\.{package} import\s*\(([^)]*)\)", text):
        names += [n.strip() for n in block.replace("\n", ",").split(",") if n.strip() and not n.strip().startswith("#")]
    return names


def _install_stand_ins(checkout: Path) -> None:
    alg_dict = checkout / "steer" / "utils" / "alg_dict.py"
    for package in STAND_INS:
        name = f"steer.{package}"
        if name in sys.modules:
            continue
        module = types.ModuleType(name)
        module.__path__ = [str(checkout / "steer" / package)]
        for attr in _imported_names(alg_dict, package):
            setattr(module, attr, None)
        sys.modules[name] = module


def load_trainer(checkout: Path):
    """`(SpiltHyperParams, get_model, generate_spilt)` from the checkout."""
    checkout = check_checkout(checkout)
    sys.path.insert(0, str(checkout))
    _install_stand_ins(checkout)
    from steer.models.get_model import get_model
    from steer.vector_generators.spilt.generate_spilt import generate_spilt
    from steer.vector_generators.spilt.generate_spilt_hparams import SpiltHyperParams
    return SpiltHyperParams, get_model, generate_spilt


def as_records(prompts: Sequence[str], positives: Sequence[str], negatives: Sequence[str]) -> list[dict]:
    """Pairs in the reference's columns; texts already templated (it runs with use_chat_template false)."""
    return [{"question": q, "matching": p, "not_matching": n} for q, p, n in zip(prompts, positives, negatives)]


def time_reference(checkout: Path, model_dir: Path, records: list[dict], run: ReferenceRun) -> float:
    """Seconds the reference's `generate_spilt` takes to train on `records` (model load excluded)."""
    if len(records) % run.batch_size:
        raise SystemExit(f"the reference needs a pair count divisible by its batch size: "
                         f"{len(records)} pairs, batch {run.batch_size}")
    SpiltHyperParams, get_model, generate_spilt = load_trainer(checkout)
    with tempfile.TemporaryDirectory() as tmp:
        link = Path(tmp) / "llama-embedded"  # the reference picks its wrapper by "llama" in the path
        link.symlink_to(Path(model_dir).resolve(), target_is_directory=True)
        hparams = SpiltHyperParams(
            layers=[run.layer], save_vectors=False, steer_vector_output_dir=tmp, max_concepts=1,
            preference_pairs=["orig_add", "orig_sub"] if run.sub_rows else ["orig_add"],
            batch_size=run.batch_size, gradient_accumulation_steps=1, n_epochs=run.epochs, lr=run.lr,
            dropout=0.0, pos_loss_weight=run.pos_weight, neg_loss_weight=run.neg_weight,
            margin_penalty_weight=run.margin_weight, margin_threshold=run.margin, ref_loss_weight=0.0,
            intervention_method="vector", low_rank_dimension=1, steering_factors=list(run.factors),
            substraction_type="normal", use_chat_template=False, dtype="fp32", device="cpu",
            model_name_or_path=str(link), use_cache=False, seed=run.seed)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            model, _ = get_model(hparams)
            start = time.perf_counter()
            generate_spilt(hparams, records, model=model, dataset_name="benchmark")
            return time.perf_counter() - start
