"""`make bench-flow`: the default flow with one slot and with two (`flow.gpu_slots`), on this machine, in one run.

Builds two fresh default projects from this checkout's HEAD and runs `chatgraft run` in each, one with
`flow.gpu_slots=1` and one with 2 (each as a person would: the thread count of a stage process is torch's choice with
one slot, the cores shared out among the slot holders with two, unless --threads fixes it for both). Prints the wall time of the whole run,
of its evaluation phase (first evaluation's start to last one's end, from the stages' MLflow runs) and of the
evaluation stages added up (two side by side each take longer), and the ratios of one slot to two. Extra
`--set KEY=VALUE` apply to both (a smaller world, fewer ratios).
"""
from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

from benchmarks.commands import CHATGRAFT, checkout_head, person_env
from flows.tracking.store import embedded_uri


def evaluation_seconds(project: Path) -> tuple[float, float, int]:
    """The evaluation phase (first evaluation stage's start to the last one's end, from the MLflow runs the flow
    opened for them), the evaluations' own seconds added up, and how many there were."""
    client = MlflowClient(embedded_uri(project))
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    runs = [run for run in client.search_runs(experiments, "tags.stage LIKE 'evaluate%'", max_results=1000)
            if run.info.end_time]
    phase = max(run.info.end_time for run in runs) - min(run.info.start_time for run in runs)
    return phase / 1000, sum(run.info.end_time - run.info.start_time for run in runs) / 1000, len(runs)


def run_flow(project: Path, slots: int, overrides: list[str]) -> tuple[float, float, float, int]:
    """`chatgraft run` with `slots` slots: whole wall seconds, then `evaluation_seconds`."""
    sets = [arg for override in [f"flow.gpu_slots={slots}", *overrides] for arg in ("--set", override)]
    started = time.perf_counter()
    subprocess.run([CHATGRAFT, "run", "--project-dir", str(project), *sets], env=person_env(), check=True)
    whole = time.perf_counter() - started
    return whole, *evaluation_seconds(project)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, help="flow.threads_per_slot for both runs (default: each's own)")
    args = parser.parse_args()
    overrides = args.overrides + ([f"flow.threads_per_slot={args.threads}"] if args.threads else [])
    figures = {}
    with tempfile.TemporaryDirectory(prefix="bench-flow-") as folder:
        for slots in (1, 2):
            print(f"chatgraft run with flow.gpu_slots={slots} (minutes)", flush=True)
            figures[slots] = run_flow(checkout_head(Path(folder) / f"slots-{slots}"), slots, overrides)
    print(f"\n{'slots':>5} {'whole run':>10} {'eval phase':>11} {'eval stages':>12} {'count':>6}")
    for slots, (whole, phase, stages, count) in figures.items():
        print(f"{slots:>5} {whole:>9.1f}s {phase:>10.1f}s {stages:>11.1f}s {count:>6}")
    (whole_1, phase_1, stages_1, _), (whole_2, phase_2, stages_2, _) = figures[1], figures[2]
    print(f"two slots against one: whole run x{whole_1 / whole_2:.2f}, evaluation phase x{phase_1 / phase_2:.2f}, "
          f"each evaluation x{stages_2 / stages_1:.2f} as long")


if __name__ == "__main__":
    main()
