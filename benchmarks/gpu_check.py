"""`make gpu-check`: on a CUDA machine, in parts (`--parts`, all by default, in this order): the default flow run on
the GPU (flow), the evaluation's in-process engines on a synthetic ~1B Llama against the memory-bandwidth bound
(engines, `bench-eval --synthetic 1b`), two candidates evaluated one after the other and side by side on one GPU
(side-by-side), and `bench-mfu` (mfu); prints each stage's device, time and peak GPU memory, and the whole check's
time against its goal: the 10 minutes a lent machine gives one command.

The flow is `chatgraft run` in this project, as `make run` runs it (its outputs land here too); every stage process
appends its wall time and device to a log (pipelines/stage_log.py), read back here. A stage that runs a model
(training, evaluation, alignment) on the CPU while a GPU is there fails the check. The side-by-side candidates are
the synthetic Llama's chat and CP models, scored by `chatgraft evaluate` on this project's evaluation sets.
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

from benchmarks.eval import SYNTHETIC
from benchmarks.synthetic_llama import llama_config, write_trio
from pipelines.stage_log import STAGE_LOG

GOAL_SECONDS = 10 * 60
PARTS = ("flow", "engines", "side-by-side", "mfu")
ENGINE_ARGS = "--synthetic 1b --prompts 256 --max-new-tokens 128 --one-at-a-time 16"
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


def run_flow() -> float:
    """`chatgraft run` with the stage log on; its seconds, then the stage table, failing when a model ran on the CPU."""
    with tempfile.TemporaryDirectory(prefix="chatgraft-gpu-check-") as work:
        log = Path(work) / "stages.jsonl"
        log.touch()
        seconds = timed([sys.executable, "-m", "flows", "run"], {STAGE_LOG: str(log)})
        rows = [json.loads(line) for line in log.read_text().splitlines()]
    print(f"\n{stage_table(rows)}\n\nflow {seconds:.0f} s (stages {sum(r['seconds'] for r in rows):.0f} s)", flush=True)
    cpu = on_cpu(rows)
    if cpu:
        sys.exit(f"gpu-check: these stages ran a model on the CPU with a GPU at hand: {', '.join(cpu)}")
    return seconds


def side_by_side(synthetic: Path, out: Path) -> float:
    """The synthetic chat and CP models scored by `chatgraft evaluate`, one after the other, then both at once on
    the one GPU; prints both wall times. Its seconds."""
    if not (synthetic / "chat").exists():
        write_trio(synthetic, llama_config(**SYNTHETIC["1b"]))
    if not Path("data/corpus").exists():
        timed([sys.executable, "-m", "dvc", "repro", "corpus"])
    evaluations = [[sys.executable, "-m", "flows", "evaluate", "--model", str(synthetic / role), "--chat",
                    str(synthetic / "chat"), "--out", str(out / role)] for role in ("chat", "cp")]
    started = time.perf_counter()
    alone = [timed(command) for command in evaluations]
    both_started = time.perf_counter()
    running = [subprocess.Popen(command) for command in evaluations]
    try:
        codes = [process.wait() for process in running]
    finally:  # a failure or Ctrl-C leaves no evaluation on the GPU
        for process in running:
            process.kill()
            process.wait()
    if any(codes):
        sys.exit(f"gpu-check: an evaluation side by side failed (exit codes {codes})")
    both = time.perf_counter() - both_started
    print(f"two candidates on one GPU: one after the other {alone[0]:.0f} + {alone[1]:.0f} = {sum(alone):.0f} s, "
          f"side by side {both:.0f} s ({sum(alone) / both:.2f}x)", flush=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"which parts, comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--mfu-args", default="", help="arguments for benchmarks.mfu, e.g. '--steps 20'")
    parser.add_argument("--engine-args", default=ENGINE_ARGS, help="arguments for benchmarks.eval")
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    if unknown := set(parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")
    if not torch.cuda.is_available():
        sys.exit("gpu-check needs a CUDA GPU (torch sees none); on CPU, `make run` and `make test` are the checks")
    print(f"gpu-check on {torch.cuda.get_device_name()} ({torch.cuda.device_count()} visible), torch "
          f"{torch.__version__}", flush=True)
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="chatgraft-gpu-check-") as work:
        synthetic = Path(work) / "synthetic-1b"  # the engines part writes it, side-by-side reads it
        for part in (p for p in PARTS if p in parts):
            print(f"\n== {part} ==", flush=True)
            if part == "flow":
                seconds[part] = run_flow()
            elif part == "engines":
                seconds[part] = timed([sys.executable, "-m", "benchmarks.eval", "--synthetic-dir", str(synthetic),
                                       *args.engine_args.split()])
            elif part == "side-by-side":
                seconds[part] = side_by_side(synthetic, Path(work) / "evaluations")
            else:
                seconds[part] = timed([sys.executable, "-m", "benchmarks.mfu", *args.mfu_args.split()])
    total = sum(seconds.values())
    print("\n" + ", ".join(f"{part} {s:.0f} s" for part, s in seconds.items()) + f"; whole check {total / 60:.1f} min "
          f"against the {GOAL_SECONDS // 60}-minute goal ({'met' if total <= GOAL_SECONDS else 'missed'})")


if __name__ == "__main__":
    main()
