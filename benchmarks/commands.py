"""`make bench-commands`: how long a person waits for each command on a finished default project.

Times the person-facing commands as a person runs them (`chatgraft ...`, a process each, the embedded default: no
MLFLOW_TRACKING_URI, no Prefect server): promote (a move, and a refused one: the version already is champion),
rollback, pin, status (with the workspace note the flow recorded, and with it found again from DVC's graph),
history, runs, clean --dry-run, check, intake, merge and evaluate on the project's tiny models (their whole work),
ui (until its banner says where it listens, and its stop, with `watch` beside it: alone, watch and `serve` need
servers of one's own), `run --no-wait` refused on a busy project, and `run` refused for a bad `--set`. Each runs
REPEATS times; the median, fastest and slowest wall times are printed. The commands run on a copy of the project, so
the project itself is left as it was; the copy gets a second version of the champion's model, so that promote and
rollback make real moves. Without --project-dir, a default project is built first in a temporary folder by
`chatgraft run` (minutes).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import socket
import sys
import tempfile
import time
from pathlib import Path

from flows.stale_outputs import RECORDED_NOTE
from pipelines.evaluate.server import free_port

REPO = Path(__file__).resolve().parents[1]
CHATGRAFT = str(Path(sys.executable).with_name("chatgraft"))
BAD_SET = "merge.ratios=[1]"  # an int where ratios are written as floats: refused before anything runs


def person_env() -> dict[str, str]:
    """The environment of a person on the embedded default."""
    return {key: value for key, value in os.environ.items()
            if not key.startswith(("MLFLOW_TRACKING_URI", "PREFECT_API"))} | {"PYTHONPATH": str(REPO)}


def timed(args: list[str], expect: int = 0) -> float:
    """Wall seconds of `chatgraft ARGS`, which must exit with `expect`."""
    start = time.perf_counter()
    done = subprocess.run([CHATGRAFT, *args], env=person_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != expect:
        raise RuntimeError(f"chatgraft {' '.join(args)} exited {done.returncode}, not {expect}:\n"
                           f"{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return seconds


def checkout_head(folder: Path) -> Path:
    """This checkout's HEAD as a git repository of its own in `folder`."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD"], capture_output=True, check=True).stdout
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "bench"]):
        subprocess.run(command, cwd=folder, check=True)
    return folder


def build_default_project(folder: Path) -> Path:
    """A finished default run of this checkout's HEAD in `folder` (a git repository of its own)."""
    checkout_head(folder)
    print(f"building a default project in {folder} (chatgraft run: minutes)", flush=True)
    subprocess.run([CHATGRAFT, "run", "--project-dir", str(folder)], env=person_env(), check=True)
    return folder


def copy_project(project: Path, folder: Path) -> tuple[str, str]:
    """Copy the project into `folder`, and register a second version of the champion's model there; returns
    (champion, the other version)."""
    shutil.copytree(project, folder, symlinks=True)
    from flows.tracking import open_store, registry
    from pipelines.config import load_params

    policy = load_params(folder / "params.yaml").promote
    model, store = policy.registered_model, open_store(folder, policy.experiment)
    champion = registry.alias_holder(store, model, registry.CHAMPION)
    if champion is None:
        raise SystemExit(f"{project}: no champion; run the flow to the end first (`chatgraft run`)")
    held = store.client.get_model_version(model, champion)
    other = store.client.create_model_version(model, held.source, held.run_id, tags=held.tags)
    return champion, str(other.version)


def status_finding_the_note(here: list[str]) -> float:
    """`chatgraft status` once the workspace note must be found again (after a change to params.yaml, say)."""
    (Path(here[-1]) / RECORDED_NOTE).unlink(missing_ok=True)
    return timed(["status", *here])


def ui_start_and_stop(here: list[str]) -> tuple[float, float]:
    """Seconds until `chatgraft ui` prints the end of its banner (where it listens, how to stop), and until it has
    stopped after SIGTERM."""
    ports = ["--port", str(free_port()), "--watch-port", str(free_port())]
    start = time.perf_counter()
    ui = subprocess.Popen([CHATGRAFT, "ui", *ports, *here], env=person_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    try:
        for line in ui.stdout:
            if line.startswith("Ctrl-C stops"):
                break
        else:
            raise RuntimeError(f"chatgraft ui exited {ui.wait()} before its banner")
        started = time.perf_counter() - start
        stop = time.perf_counter()
        ui.send_signal(signal.SIGTERM)
        ui.wait(60)
        return started, time.perf_counter() - stop
    finally:
        if ui.poll() is None:
            ui.kill()
            ui.wait()


def measure(source: Path, copy: Path, repeats: int) -> dict[str, list[float]]:
    """Seconds of each command, `repeats` times, on a copy (in `copy`) of the project in `source`."""
    from flows.workspace import workspace_lock

    champion, other = copy_project(source, copy)
    here = ["--project-dir", str(copy)]
    timed(["status", *here])  # the copy's first open moves its store's locations here: not a person's wait
    commands = [(f"promote {other}", ["promote", other], 0),
                (f"promote {other} (already champion: refused)", ["promote", other], 1),
                (f"rollback (to {champion})", ["rollback"], 0),
                (f"pin {champion}", ["pin", champion], 0), (f"pin {champion} --off", ["pin", champion, "--off"], 0),
                ("status", ["status"], 0), ("history", ["history"], 0), ("runs", ["runs"], 0),
                ("clean --dry-run", ["clean", "--dry-run"], 0),
                ("check", ["check"], 0), ("intake (an empty inbox)", ["intake"], 0),
                (f"run --set {BAD_SET} (refused)", ["run", "--set", BAD_SET], 2),
                ("--help (the interpreter and the CLI alone)", ["--help"], 0)]
    models = copy / "models"
    work = [("merge (the tiny pair: the whole merge)",
             ["merge", "--base", models / "upstream/base", "--chat", models / "upstream/chat", "--cp", models / "cp",
              "--out", copy / "bench-merge", "--overwrite"]),
            ("evaluate (a tiny model: every suite)",
             ["evaluate", "--model", models / "merged/alpha-1.0", "--chat", models / "upstream/chat",
              "--corpus", copy / "data/corpus", "--out", copy / "bench-evaluate", *here])]
    busy = "run --no-wait (busy project: refused)"
    finding, ui_up, ui_down = "status (workspace note found again: DVC)", "ui (until its banner)", "ui (its stop)"
    figures: dict[str, list[float]] = {label: [] for label in [*(c[0] for c in commands), *(w[0] for w in work),
                                                               finding, ui_up, ui_down, busy]}
    for _ in range(repeats):
        for label, args, expect in commands:
            figures[label].append(timed([*args, *here] if args != ["--help"] else args, expect))
        for label, args in work:
            figures[label].append(timed(list(map(str, args))))
        figures[finding].append(status_finding_the_note(here))
        for label, seconds in zip((ui_up, ui_down), ui_start_and_stop(here)):
            figures[label].append(seconds)
        with workspace_lock(copy, "bench-commands: a run holding the project", 0, print):
            figures[busy].append(timed(["run", "--no-wait", *here], 3))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project-dir", type=Path, default=None,
                        help="a finished default project (default: build one in a temporary folder)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-commands-") as scratch:
        source = args.project_dir.resolve() if args.project_dir else build_default_project(Path(scratch) / "built")
        figures = measure(source, Path(scratch) / "copy", args.repeats)
    print(f"\nchatgraft commands on a finished default project ({args.repeats} runs each, a process each):")
    print(f"{'command':48s} {'median':>8s} {'fastest':>8s} {'slowest':>8s}")
    for command, seconds in figures.items():
        print(f"{command:48s} {statistics.median(seconds):7.2f}s {min(seconds):7.2f}s {max(seconds):7.2f}s")


if __name__ == "__main__":
    main()
