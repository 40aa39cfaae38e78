"""`make bench-merge`: chatgraft's merge against the naive recipe, the I/O floor and (when installed) mergekit.

Builds three synthetic bf16 Llama models (hidden 2048, intermediate 4096, 16 heads, vocab 32000, untied) of
~0.93 GB, then again at twice the size, and runs each contender in its own process: wall time of the merge
itself, peak RSS and peak anonymous memory (RssAnon, sampled from /proc every few ms). Prints a table and the
ratios the merge issue sets as goals, and checks the engine's output bit for bit against a plain-torch fp32
reference. mergekit is optional: set MERGEKIT_PYTHON to a Python that can import it (or install it here).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from benchmarks.synthetic_llama import llama_config, size_bytes, write_trio
from pipelines.merge.checkpoint import SafetensorsCheckpoint

REPO = Path(__file__).resolve().parents[1]
SIZES = {"1x": 8, "2x": 19}  # layers: 8 gives ~0.93 GB, 19 about twice that with the same embeddings


@dataclass(frozen=True)
class Measurement:
    process_seconds: float  # the whole process: interpreter, imports, merge
    seconds: float  # the merge call alone
    peak_rss_mb: float
    peak_anon_mb: float


def _status(pid: int) -> dict[str, int]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    fields = (line.split(":", 1) for line in lines)
    return {key: int(value.split()[0]) for key, value in fields if key in ("VmHWM", "VmRSS", "RssAnon")}


def measure(python: str, contender: str, paths: list[Path]) -> Measurement:
    """Run one contender in a fresh process; sample its memory until it exits."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    process = subprocess.Popen([python, "-m", "benchmarks.merge_contenders", contender, *map(str, paths)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    peak = {"VmHWM": 0, "VmRSS": 0, "RssAnon": 0}
    while process.poll() is None:
        for key, value in _status(process.pid).items():
            peak[key] = max(peak[key], value)
        time.sleep(0.003)
    process_seconds = time.perf_counter() - start
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{contender} failed ({process.returncode}):\n{stderr[-3000:]}")
    seconds = json.loads(stdout.strip().splitlines()[-1])["seconds"]
    return Measurement(process_seconds, seconds, max(peak["VmHWM"], peak["VmRSS"]) / 1024, peak["RssAnon"] / 1024)


def bit_identical(trio: dict[str, Path], merged: Path, ratio: float = 1.0) -> bool:
    """Every output tensor equals (cp.float() + ratio * (chat.float() - base.float())).to(bf16)."""
    with SafetensorsCheckpoint(merged) as out:
        handles = {role: safe_open(path / "model.safetensors", "pt") for role, path in trio.items()}
        for name in handles["cp"].keys():
            cp, chat, base = (handles[r].get_tensor(name) for r in ("cp", "chat", "base"))
            expected = (cp.float() + ratio * (chat.float() - base.float())).to(cp.dtype)
            if not torch.equal(out.get(name), expected):
                return False
    return True


def _mergekit_python() -> str | None:
    explicit = os.environ.get("MERGEKIT_PYTHON")
    if explicit:
        return explicit
    probe = subprocess.run([sys.executable, "-c", "import mergekit"], capture_output=True)
    return sys.executable if probe.returncode == 0 else None


def run_size(label: str, layers: int, work: Path, repeats: int, mergekit: str | None) -> dict[str, Measurement]:
    """Build one trio, run every contender `repeats` times (fastest time, largest memory kept)."""
    root = work / label
    shutil.rmtree(root, ignore_errors=True)
    print(f"[{label}] writing synthetic models ({layers} layers) ...", flush=True)
    trio = write_trio(root, llama_config(layers))
    print(f"[{label}] each model {size_bytes(trio['cp']) / 1e9:.2f} GB", flush=True)
    contenders = {"io_floor": sys.executable, "engine": sys.executable, "naive": sys.executable}
    if mergekit:
        contenders["mergekit"] = mergekit
    results: dict[str, Measurement] = {}
    for repeat in range(repeats):
        for name, python in contenders.items():
            out = root / f"out-{name}"
            shutil.rmtree(out, ignore_errors=True)
            os.sync()  # the previous contender's unsynced writes must not land on this one's clock
            got = measure(python, name, [trio["base"], trio["chat"], trio["cp"], out])
            best = results.get(name, got)
            results[name] = Measurement(min(best.process_seconds, got.process_seconds), min(best.seconds, got.seconds),
                                        max(best.peak_rss_mb, got.peak_rss_mb), max(best.peak_anon_mb, got.peak_anon_mb))
            print(f"[{label}] {name:9s} run {repeat + 1}: process {got.process_seconds:6.2f} s, merge "
                  f"{got.seconds:6.2f} s, anon {got.peak_anon_mb:7.0f} MB", flush=True)
    print(f"[{label}] engine output bit-identical to the fp32 reference: "
          f"{bit_identical(trio, root / 'out-engine')}", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    return results


def report(all_results: dict[str, dict[str, Measurement]]) -> None:
    """The table and the goal ratios (wall ratios for the whole process and for the merge call alone)."""
    print(f"\n{'size':4s} {'contender':9s} {'process s':>10s} {'merge s':>8s} {'peak RSS MB':>12s} {'peak anon MB':>13s}")
    for label, results in all_results.items():
        for name, m in results.items():
            print(f"{label:4s} {name:9s} {m.process_seconds:10.2f} {m.seconds:8.2f} {m.peak_rss_mb:12.0f} "
                  f"{m.peak_anon_mb:13.0f}")
    print("\nratios: engine / other, wall as process | merge call (goal in brackets)")
    for label, r in all_results.items():
        engine = r["engine"]
        for other, goal, memory_goal in (("io_floor", "<= 2", ""), ("naive", "", ""),
                                         ("mergekit", "<= 0.4", " [<= 0.5]")):
            if other in r:
                o = r[other]
                print(f"{label}: vs {other:8s} wall {engine.process_seconds / o.process_seconds:.2f} | "
                      f"{engine.seconds / o.seconds:.2f} {'[' + goal + ']' if goal else ''}  "
                      f"anon {engine.peak_anon_mb / o.peak_anon_mb:.2f}{memory_goal}")
    if {"1x", "2x"} <= all_results.keys():
        growth = all_results["2x"]["engine"].peak_anon_mb / all_results["1x"]["engine"].peak_anon_mb
        print(f"engine peak anon 2x / 1x: {growth:.2f} [not growing: ~1.0]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/chatgraft-bench-merge"), help="scratch directory")
    parser.add_argument("--repeats", type=int, default=2, help="runs per contender (fastest kept)")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    args = parser.parse_args()
    mergekit = _mergekit_python()
    print(f"mergekit: {mergekit or 'not installed (set MERGEKIT_PYTHON to compare)'}")
    results = {label: run_size(label, SIZES[label], args.work, args.repeats, mergekit) for label in args.sizes}
    report(results)


if __name__ == "__main__":
    main()
