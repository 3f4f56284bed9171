"""Leaving the user's model as it was: frozen parameters and eval mode only while we work."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from .errors import SplitPluginError


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Freeze every parameter and switch to eval mode; restore flags and modes on exit, always."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        model.eval()
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def hooked_modules(model: nn.Module) -> list[str]:
    """Names of modules that carry forward hooks or pre-hooks (for checks and tests)."""
    return [name for name, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def check_device(requested: str, model: nn.Module) -> torch.device:
    """The model's device, refusing a requested device that is missing or differs from it."""
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError, ValueError):
        raise SplitPluginError(f"device {requested!r} is not a device name; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SplitPluginError(f"device {requested!r} was asked for but CUDA is not available on "
                               "this machine; set device: cpu")
    actual = model_device(model)
    if actual.type != device.type:
        raise SplitPluginError(f"the model is on {actual} but device {requested!r} was asked for; "
                               f"move the model first (model.to({requested!r})) or set device: {actual.type}")
    return actual
