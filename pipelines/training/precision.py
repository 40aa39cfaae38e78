"""Number formats of training: float32 master weights where weights are updated, bf16 autocast on GPUs.

Updating bf16 weights directly loses small steps to rounding: at a CP learning rate of 2e-5, AdamW's step is
below half a bf16 unit for most weights, so they never move. Full fine-tuning therefore loads float32 weights
(whatever the checkpoint holds), computes in bf16 under autocast on GPUs, and saves in the checkpoint's dtype.
LoRA leaves the base weights frozen in the checkpoint's dtype; peft keeps its adapters in float32.
"""
from __future__ import annotations

import torch
from transformers import PretrainedConfig


def checkpoint_dtype(config: PretrainedConfig) -> torch.dtype:
    """The dtype a checkpoint's config names (float32 when it names none)."""
    dtype = getattr(config, "dtype", None) or torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def master_dtype(config: PretrainedConfig, full_weights: bool) -> torch.dtype:
    """The dtype to load a checkpoint in for training: float32 when every weight is updated."""
    return torch.float32 if full_weights else checkpoint_dtype(config)


def bf16_autocast() -> bool:
    """Compute under bf16 autocast: on GPUs that have it."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
