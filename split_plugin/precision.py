"""The precision trainable tensors and losses are kept in: fp32, or fp64 for a float64 model.

Half-precision models still train fp32 master weights; a float64 model keeps everything in
float64, so an exactness check (tests/test_train.py) can separate math from rounding.
"""
from __future__ import annotations

import torch


def master_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 for fp64 activations, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def upcast(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` in its master dtype (a no-op for fp32 and fp64 tensors)."""
    return tensor.to(master_dtype(tensor.dtype))
