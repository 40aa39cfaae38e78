"""Where models run outside training: the accelerator when there is one (in bf16 where it has it), else the CPU
in float32. Training places itself (the Trainer, accelerate); evaluation, the harness and classifiers use this."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel


def resolve_device(setting: str, key: str = "eval.device") -> torch.device:
    """`auto`: the first CUDA device when one is visible, else the CPU; otherwise the device named (cpu, cuda,
    cuda:1), refused naming `key` when it is not there."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise ValueError(f"{key}: {setting!r} is not a device (auto, cpu, cuda or cuda:<index>)") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"{key} is {setting!r} but this machine has {torch.cuda.device_count()} visible CUDA "
                         "device(s): use auto or cpu")
    return device


def inference_dtype(device: torch.device) -> torch.dtype:
    """bf16 on accelerators that have it, float32 elsewhere (CPU bf16 matmuls are slow and less exact)."""
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32


def load_for_inference(model_dir: Path, device: torch.device) -> PreTrainedModel:
    """A causal LM from `model_dir`, on `device` in its inference dtype, in eval mode."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=inference_dtype(device))
    return model.to(device).eval()
