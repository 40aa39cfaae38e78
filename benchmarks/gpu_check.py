"""`make gpu-check`: on a CUDA machine, the default flow run on the GPU, then `bench-mfu`; prints each stage's
device, time and peak GPU memory, the MFU, and the whole check's time against its 8-minute goal (one H100-class GPU).

The flow is `chatgraft run` in this project, as `make run` runs it (its outputs land here too); every stage process
appends its wall time and device to a log (pipelines/stage_log.py), read back here. A stage that runs a model
(training, evaluation, alignment) on the CPU while a GPU is there fails the check.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from pipelines.stage_log import STAGE_LOG

GOAL_SECONDS = 8 * 60
MODEL_STAGES = ("upstream", "cp", "evaluate", "align")  # stages whose work is a model's forward/backward passes


def stage_table(rows: list[dict]) -> str:
    """The stage log as a Markdown table: stage, device, seconds, peak GPU memory."""
    lines = ["| stage | device | seconds | peak GPU GiB |", "| --- | --- | ---: | ---: |"]
    lines += [f"| {r['stage']} | {r['device']} | {r['seconds']:.1f} | {r['cuda_peak_gib'] or '-'} |" for r in rows]
    return "\n".join(lines)


def on_cpu(rows: list[dict]) -> list[str]:
    """The model-running stages that computed on the CPU."""
    return [r["stage"] for r in rows if r["stage"].split()[0] in MODEL_STAGES and r["device"] != "cuda"]


def timed(command: list[str], env: dict[str, str] | None = None) -> float:
    """Run `command` here, its output on the console; its wall seconds, or exit with its status when it fails."""
    started = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, **(env or {})}, check=False)
    if done.returncode:
        sys.exit(f"gpu-check: {' '.join(command)} exited {done.returncode}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mfu-args", default="", help="arguments for benchmarks.mfu, e.g. '--steps 20'")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gpu-check needs a CUDA GPU (torch sees none); on CPU, `make run` and `make test` are the checks")
    print(f"gpu-check on {torch.cuda.get_device_name()} ({torch.cuda.device_count()} visible), torch "
          f"{torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory(prefix="chatgraft-gpu-check-") as work:
        log = Path(work) / "stages.jsonl"
        log.touch()
        flow_seconds = timed([sys.executable, "-m", "flows", "run"], {STAGE_LOG: str(log)})
        rows = [json.loads(line) for line in log.read_text().splitlines()]
    mfu_seconds = timed([sys.executable, "-m", "benchmarks.mfu", *args.mfu_args.split()])
    total = flow_seconds + mfu_seconds
    print(f"\n{stage_table(rows)}\n")
    print(f"flow {flow_seconds:.0f} s (stages {sum(r['seconds'] for r in rows):.0f} s), bench-mfu {mfu_seconds:.0f} s;"
          f" whole check {total / 60:.1f} min against the {GOAL_SECONDS // 60}-minute goal "
          f"({'met' if total <= GOAL_SECONDS else 'missed'})")
    cpu = on_cpu(rows)
    if cpu:
        sys.exit(f"gpu-check: these stages ran a model on the CPU with a GPU at hand: {', '.join(cpu)}")


if __name__ == "__main__":
    main()
