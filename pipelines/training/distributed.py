"""Data-parallel runs: a stage relaunches itself under torchrun; only the first process writes outputs, with the
weights gathered first where FSDP sharded them."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel


def world_size() -> int:
    """Processes in this run (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """The process that writes models, metrics and plots."""
    return int(os.environ.get("RANK", "0")) == 0


def under_launcher() -> bool:
    """True inside a process torchrun started."""
    return "LOCAL_RANK" in os.environ


def relaunch(nproc_per_node: int, stage_args: list[str]) -> int:
    """Run `python -m pipelines <stage_args>` in `nproc_per_node` processes under torchrun; return its exit code."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
               "-m", "pipelines", *stage_args]
    return subprocess.run(command).returncode


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole weights of a model sharded by FSDP, on the main process's CPU; None for a model not sharded.

    Every process must call it for a sharded model (the shards are gathered); the others get an empty dict.
    """
    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return None  # each process holds the whole model: save it as it is
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_model(model: PreTrainedModel, directory: Path, dtype: torch.dtype,
               weights: dict[str, torch.Tensor] | None = None) -> None:
    """`save_pretrained` in `dtype`: the model's own weights, or `weights` gathered by `full_state_dict`."""
    if weights is None:
        model.to(dtype).save_pretrained(directory)
        return
    model.save_pretrained(directory, state_dict={name: tensor.to(dtype) if tensor.is_floating_point() else tensor
                                                 for name, tensor in weights.items()})
    model.config.dtype = dtype  # save_pretrained wrote the sharded model's own dtype
    model.config.save_pretrained(directory)
