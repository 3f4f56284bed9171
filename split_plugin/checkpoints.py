"""Training checkpoints: the intervention, optimizer and schedule, written atomically and checked on resume."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .config import TrainConfig
from .errors import SplitPluginError
from .fileio import atomic_path
from .intervention import Intervention

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


_RESUME_KEYS = ("method", "form", "layer", "rank", "alpha", "factors", "sub_rows", "batch_size",
                "grad_accum", "epochs", "seed", "lr")


def save_checkpoint(directory: str | os.PathLike, intervention: Intervention, optimizer, scheduler,
                    config: TrainConfig, step: int, log: list) -> Path:
    """Write the training state atomically (a crash mid-write keeps the previous checkpoint)."""
    path = Path(directory) / CHECKPOINT_NAME
    state = {"format": CHECKPOINT_FORMAT, "step": step, "config": config.to_dict(),
             "intervention_config": intervention.config.to_dict(),
             "intervention": {k: v.detach().cpu() for k, v in intervention.state_dict().items()},
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "log": log}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | os.PathLike, intervention: Intervention, optimizer, scheduler,
                    config: TrainConfig) -> tuple[int, list]:
    """Restore training state, refusing a corrupted file or one from different settings."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SplitPluginError(f"no checkpoint at {path}; train with checkpoint_dir set first") from None
    except Exception as exc:  # torch.load raises several types for a damaged file
        raise SplitPluginError(f"{path} is not a readable checkpoint ({_reason(exc)}); "
                               "it is corrupted or truncated: resume from another or train afresh") from None
    _check_structure(state, path)
    changed = [k for k in _RESUME_KEYS if state["config"].get(k) != config.to_dict().get(k)]
    if changed:
        raise SplitPluginError(f"the checkpoint was made with other settings for {changed}; resume "
                               "with the same config")
    saved = {k: v for k, v in state["intervention_config"].items() if k not in ("concept", "version")}
    ours = {k: v for k, v in intervention.config.to_dict().items() if k in saved}
    if saved != ours:
        diff = sorted(k for k in ours if saved[k] != ours[k])
        raise SplitPluginError(f"{path} holds an intervention with other {diff} ({[saved[k] for k in diff]} "
                               f"there, {[ours[k] for k in diff]} here); resume with the same model and config")
    try:
        intervention.load_state_dict(state["intervention"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (KeyError, RuntimeError, TypeError, ValueError, IndexError) as exc:
        raise SplitPluginError(f"{path} does not fit this training run ({_reason(exc)}); "
                               "resume from another checkpoint or train afresh") from None
    return state["step"], list(state["log"])


def _reason(exc: BaseException, limit: int = 200) -> str:
    """An exception as one short line, for wrapping it in our message."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


_STATE_TYPES = {"step": int, "config": dict, "intervention_config": dict, "intervention": dict,
                "optimizer": dict, "scheduler": dict, "log": list}


def _check_structure(state, path: Path) -> None:
    """Refuse a readable file that is not one of our checkpoints (or is damaged inside)."""
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise SplitPluginError(f"{path} is not a split_plugin checkpoint (format {CHECKPOINT_FORMAT}); "
                               "resume from a checkpoint_dir written by train()")
    wrong = [k for k, t in _STATE_TYPES.items() if not isinstance(state.get(k), t)]
    if wrong or state["step"] < 0:
        raise SplitPluginError(f"{path} is a damaged checkpoint (bad or missing {wrong or ['step']}); "
                               "resume from another or train afresh")
    bad = [k for k, v in state["intervention"].items() if not torch.is_tensor(v) or not torch.isfinite(v).all()]
    if bad:
        raise SplitPluginError(f"{path} holds non-finite or non-tensor values in {bad}; resume from an "
                               "earlier checkpoint or train afresh")
