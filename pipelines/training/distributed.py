"""Data-parallel runs: a stage relaunches itself under torchrun, on one node or as one node of several (c10d
rendezvous); only the first process of the whole run writes outputs, with the weights gathered first where FSDP
sharded them."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel

from pipelines.config import DistributedParams

NODE_ENV = "CHATGRAFT_CP_NODE"  # set on the nodes a launch starts: each runs its own agent and launches nothing


def world_size() -> int:
    """Processes in this run (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """The process that writes models, metrics and plots."""
    return int(os.environ.get("RANK", "0")) == 0


def under_launcher() -> bool:
    """True inside a process torchrun started."""
    return "LOCAL_RANK" in os.environ


def relaunch(distributed: DistributedParams, stage_args: list[str]) -> int:
    """Run `python -m pipelines <stage_args>` under torchrun and return its exit code: this node's processes alone,
    or this node's agent of a multi-node run. With `distributed.launch`, the first call (not on a node it started)
    runs that command instead, which starts every node's agent, and waits for it."""
    if distributed.nnodes > 1 and distributed.launch and NODE_ENV not in os.environ:
        return subprocess.run(shlex.split(distributed.launch), env={**os.environ, NODE_ENV: "1"}).returncode
    command = [sys.executable, "-m", "torch.distributed.run", *torchrun_args(distributed), "-m", "pipelines",
               *stage_args]
    return subprocess.run(command).returncode


def torchrun_args(distributed: DistributedParams) -> list[str]:
    """torchrun's options for one node: standalone, or joining the c10d rendezvous of `nnodes` nodes."""
    if distributed.nnodes == 1:
        return ["--standalone", f"--nproc_per_node={distributed.nproc_per_node}"]
    endpoint = os.path.expandvars(distributed.rdzv_endpoint or "")
    if "$" in endpoint:  # set by the launcher on each node (infra/slurm/cp.sbatch: the allocation's first node)
        raise ValueError(f"cp.distributed.rdzv_endpoint {distributed.rdzv_endpoint!r}: {endpoint.split(':')[0]} is "
                         "not set in this node's environment")
    return [f"--nnodes={distributed.nnodes}", f"--nproc_per_node={distributed.nproc_per_node}",
            "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}", f"--rdzv_id={distributed.rdzv_id}"]


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
