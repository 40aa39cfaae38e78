"""`make bench-overhead`: what DVC and MLflow cost around a merge, on gigabyte models, against the merge itself.

Builds synthetic bf16 Llama checkpoints of ~0.93 GB and about twice that (benchmarks.merge's sizes) and takes the
merged model through the path a stage's output takes: `dvc repro` of a merge stage (the merge command, then DVC's
commit of its output into the cache), the stage's MLflow run, the registration (mlflow.transformers.log_model from
the folder, then register), `dvc push`, and loading the champion back by alias. Each step runs in a process of its
own: wall time and the peak RSS of its process tree (sampled every few ms). It does so twice a size, once with DVC's
default links (`reflink,copy`: a copy where the filesystem has no reflinks) and once with the link types this
project's .dvc/config sets, and prints the overhead ratio (DVC commit + MLflow run + registration over the merge
command's time), how each step grows when the model doubles, and the disk the project holds per model.
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

import psutil
import yaml

from benchmarks.merge import SIZES
from benchmarks.synthetic_llama import llama_config, size_bytes, write_trio
from flows.dvc_project import DvcProject

REPO = Path(__file__).resolve().parents[1]
DVC_DEFAULT = "reflink,copy"
BOOKKEEPING = ("dvc commit", "mlflow run", "register")  # the overhead ratio's numerator
DISK = {"workspace": "models/merged", "dvc cache": ".dvc/cache", "mlflow artifacts": "mlflow/artifacts",
        "dvc remote": "../remote"}


@dataclass(frozen=True)
class Step:
    seconds: float  # what the step costs the flow: the call for steps the flow's process makes (its imports paid)
    process_seconds: float  # the step run alone, as a command: interpreter, imports and the call
    peak_rss_mb: float


def tree_rss_mb(process: psutil.Process) -> float:
    """RSS of a process and its descendants, in MB."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:  # ended between the listing and the reading
            pass
    return total / 2**20


def measure(command: list[str], cwd: Path) -> Step:
    """Run a command: its wall time, the peak RSS of its process tree, and the seconds of the call it reports on
    its last line (a benchmarks.overhead_steps step), else its wall time."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1",
           "MLFLOW_TRACKING_URI": ""}
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched, peak = psutil.Process(process.pid), 0.0
    while process.poll() is None:
        try:
            peak = max(peak, tree_rss_mb(watched))
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.005)
    seconds = time.perf_counter() - start
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{stdout[-2000:]}{stderr[-3000:]}")
    last = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    call = json.loads(last)["seconds"] if last.startswith("{") else seconds
    return Step(call, seconds, peak)


def make_project(root: Path, trio: dict[str, Path], link_types: str) -> None:
    """A git + DVC project with one merge stage (the inputs outside it), a local remote, the given link types."""
    root.mkdir(parents=True)
    stamp = "date +%s.%N >"  # the merge command's own start and end, so DVC's part is the rest of the repro
    merge = (f"{sys.executable} -m flows merge --base {trio['base']} --chat {trio['chat']} --cp {trio['cp']} "
             "--out models/merged --report reports/merge.json")
    stage = {"cmd": [f"{stamp} ../merge-start", merge, f"{stamp} ../merge-end"],
             "outs": ["models/merged", {"reports/merge.json": {"cache": False}}]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"merge": stage}}, sort_keys=False))
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                    [sys.executable, "-m", "dvc", "config", "cache.type", link_types],
                    [sys.executable, "-m", "dvc", "remote", "add", "-q", "-d", "local", "../remote"]):
        subprocess.run(command, cwd=root, check=True, capture_output=True)


def disk_mb(root: Path) -> dict[str, float]:
    """Disk each place holds, and the project with its remote in all (`du` counts a hardlinked file once)."""
    def du(*paths: Path) -> float:
        found = subprocess.run(["du", "-sk", "--total", *map(str, paths)], capture_output=True, text=True, check=True)
        return int(found.stdout.splitlines()[-1].split()[0]) / 1024
    places = {name: du(root / path) for name, path in DISK.items()}
    places["in all"] = du(*(root / path for path in DISK.values()))
    places["cache beyond workspace"] = du(root / DISK["workspace"], root / DISK["dvc cache"]) - places["workspace"]
    return places


def run_policy(label: str, trio: dict[str, Path], work: Path, link_types: str) -> tuple[dict[str, Step], dict]:
    """Every step once on a fresh project with `link_types`; the steps' figures and the disk held after."""
    root = work / "project"
    shutil.rmtree(work, ignore_errors=True)
    make_project(root, trio, link_types)
    steps_module = [sys.executable, "-m", "benchmarks.overhead_steps"]
    measure([*steps_module, "store-init", str(root)], root)
    steps: dict[str, Step] = {}
    os.sync()
    repro = measure([*steps_module, "repro", str(root)], root)  # the call: `dvc repro` is a process of its own
    merge_seconds = float((work / "merge-end").read_text()) - float((work / "merge-start").read_text())
    steps["merge command"] = Step(merge_seconds, merge_seconds, repro.peak_rss_mb)
    steps["dvc commit"] = Step(repro.seconds - merge_seconds, repro.seconds - merge_seconds, repro.peak_rss_mb)
    steps["mlflow run"] = measure([*steps_module, "log-run", str(root)], root)
    steps["register"] = measure([*steps_module, "register", str(root), str(root / "models" / "merged")], root)
    steps["dvc push"] = measure([sys.executable, "-m", "dvc", "push", "-q"], root)
    steps["load by alias"] = measure([*steps_module, "load", str(root)], root)
    for name, step in steps.items():
        print(f"[{label} {link_types}] {name:14s} {step.seconds:7.2f} s (alone {step.process_seconds:7.2f} s)  "
              f"peak RSS {step.peak_rss_mb:7.0f} MB", flush=True)
    return steps, disk_mb(root)


def overhead_ratio(steps: dict[str, Step]) -> float:
    return sum(steps[name].seconds for name in BOOKKEEPING) / steps["merge command"].seconds


def report(results: dict[tuple[str, str], tuple[dict[str, Step], dict]], model_gb: dict[str, float]) -> None:
    """The tables: each step's time and memory, the disk per model, the ratios against the goals."""
    print(f"\n{'size':4s} {'links':28s} {'step':14s} {'seconds':>8s} {'alone s':>8s} {'peak RSS MB':>12s}")
    for (label, links), (steps, _) in results.items():
        for name, step in steps.items():
            print(f"{label:4s} {links:28s} {name:14s} {step.seconds:8.2f} {step.process_seconds:8.2f} "
                  f"{step.peak_rss_mb:12.0f}")
    print(f"\n{'size':4s} {'links':28s} " + " ".join(f"{name:>16s}" for name in [*DISK, "in all"]) + "  (MB)")
    for (label, links), (_, disk) in results.items():
        print(f"{label:4s} {links:28s} " + " ".join(f"{disk[name]:16.0f}" for name in [*DISK, "in all"]))
    print("\nratios (goal in brackets)")
    for (label, links), (steps, disk) in results.items():
        print(f"{label} {links}: overhead (dvc commit + mlflow run + register) / merge command "
              f"{overhead_ratio(steps):.2f} [<= 0.5 at 1x]; the DVC cache holds {disk['cache beyond workspace']:.0f} "
              f"MB beyond the workspace [~0: no second copy]; model {model_gb[label]:.2f} GB")
    links = {key[1] for key in results}
    for link in sorted(links):
        if ("1x", link) in results and ("2x", link) in results:
            small, large = results[("1x", link)][0], results[("2x", link)][0]
            growth = {name: large[name].seconds / small[name].seconds for name in small}
            print(f"2x / 1x with {link} (model {model_gb['2x'] / model_gb['1x']:.2f}x): " +
                  ", ".join(f"{name} {value:.2f}" for name, value in growth.items()))
            print(f"  overhead time {sum(large[n].seconds for n in BOOKKEEPING) / sum(small[n].seconds for n in BOOKKEEPING):.2f}"
                  f" [<= model growth]; register memory {large['register'].peak_rss_mb / small['register'].peak_rss_mb:.2f}"
                  " [~1.0: no model load]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/chatgraft-bench-overhead"), help="scratch directory")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    args = parser.parse_args()
    policies = list(dict.fromkeys([DVC_DEFAULT, DvcProject(REPO).link_types()]))
    results, model_gb = {}, {}
    for label in args.sizes:
        inputs = args.work / label / "inputs"
        shutil.rmtree(args.work / label, ignore_errors=True)
        print(f"[{label}] writing synthetic models ({SIZES[label]} layers) ...", flush=True)
        trio = write_trio(inputs, llama_config(SIZES[label]))
        model_gb[label] = size_bytes(trio["cp"]) / 1e9
        for links in policies:
            results[(label, links)] = run_policy(label, trio, args.work / label / links.replace(",", "-"), links)
        shutil.rmtree(args.work / label, ignore_errors=True)
    report(results, model_gb)
    print(json.dumps({f"{label} {links}": {"overhead_ratio": overhead_ratio(steps), "disk_mb": disk}
                      for (label, links), (steps, disk) in results.items()}))


if __name__ == "__main__":
    main()
