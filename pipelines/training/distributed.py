"""Data-parallel runs: a stage relaunches itself under torchrun; only the first process writes outputs."""
from __future__ import annotations

import os
import subprocess
import sys


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
