"""A run's watchdog: when a `chatgraft run` dies without ending what it started (SIGKILL by the OOM killer or by
hand), it stops what is left (the Prefect server, DVC, the stage's command) and records it for the next run.

It is a process of its own (`python -m flows.watchdog`), in a session of its own so that a kill of the run's process
group spares it; it imports psutil and filelock, never Prefect or MLflow. A run that ends normally stands it down.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path

import psutil

from flows.processes import stop_processes
from filelock import FileLock, Timeout

from flows.workspace import STATE_DIR

MARK = "CHATGRAFT_RUN_MARK"  # in the environment of every process a run starts, so that its orphans are found too
POLL_SECONDS = 0.5
GRACE_SECONDS = 5.0  # after SIGTERM, before SIGKILL
RECORD = "watchdog.json"  # in the state dir: what watchdogs stopped, until the next run reports it
SOURCE_ROOT = Path(__file__).resolve().parents[1]  # where `python -m flows.watchdog` finds the package


@contextmanager
def watchdog(root: Path) -> Iterator[None]:
    """Watch this process, a run in project `root`, while the block runs (enter it before the run starts any
    process): if the process dies in it, what it started is stopped. The watchdog stands down when the block ends."""
    state = root.resolve() / STATE_DIR
    state.mkdir(exist_ok=True)
    os.environ[MARK] = mark = uuid.uuid4().hex
    with (state / "watchdog.log").open("a") as log:
        process = subprocess.Popen([sys.executable, "-m", "flows.watchdog", str(os.getpid()), mark, str(state)],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=SOURCE_ROOT,
                                   start_new_session=True)
    try:
        yield
    finally:
        process.terminate()  # SIGTERM: the watchdog ends at once
        process.wait()
        del os.environ[MARK]


def take_record(state: Path) -> list[str]:
    """What watchdogs stopped since the last call (a line a process), the record cleared: call it while holding the
    workspace whose state dir is `state`."""
    path = state / RECORD
    entries = _read(path)
    path.unlink(missing_ok=True)
    return [process for entry in entries for process in entry["stopped"]]


def watch(run_pid: int, mark: str, state: Path) -> None:
    """Follow run `run_pid` until it ends; then stop what it left, and record it in `state`."""
    # the parent already gone: the run died before its watchdog looked, and only its mark finds what it left
    tree = _follow(psutil.Process(run_pid)) if os.getppid() == run_pid else {}
    left = _left_behind(tree, mark)
    if not left:
        return
    with ExitStack() as held:
        with suppress(Timeout):  # free once the run died; a new run that took it first has nothing of this one
            held.enter_context(FileLock(state / "run.lock", timeout=0))  # flows.workspace's lock of the project
        _record(state, run_pid, _stop(left))


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _follow(run: psutil.Process) -> dict[int, psutil.Process]:
    """The run's descendants as seen at every poll until it ends (a Process keeps its start time: a pid used again
    by another process is not taken for it)."""
    tree: dict[int, psutil.Process] = {}
    while _alive(run):
        with suppress(psutil.Error):
            tree |= {child.pid: child for child in run.children(recursive=True)}
        time.sleep(POLL_SECONDS)
    return tree


def _carries(process: psutil.Process, mark: str) -> bool:
    try:
        return process.environ().get(MARK) == mark
    except psutil.Error:  # gone, a zombie, or another user's
        return False


def _left_behind(tree: dict[int, psutil.Process], mark: str) -> list[psutil.Process]:
    """What of the run still lives: the descendants seen while it ran, and those carrying its mark (started since
    the last poll, orphaned by then)."""
    marked = {process.pid: process for process in psutil.process_iter() if _carries(process, mark)}
    return [process for process in (tree | marked).values() if process.pid != os.getpid() and _alive(process)]


def _describe(process: psutil.Process) -> str:
    """Its command, absolute paths shortened to their last part, and its pid."""
    try:
        text = " ".join(Path(arg).name if arg.startswith("/") else arg for arg in process.cmdline()) or process.name()
    except psutil.Error:
        text = "a process that ended meanwhile"
    return f"{text[:200]}{'...' if len(text) > 200 else ''} (pid {process.pid})"


def _stop(processes: list[psutil.Process]) -> list[str]:
    """SIGTERM each, SIGKILL what is left after GRACE_SECONDS; returns what they were."""
    stopped = [_describe(process) for process in processes]
    stop_processes(processes, GRACE_SECONDS)
    return stopped


def _read(path: Path) -> list[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return []


def _record(state: Path, run_pid: int, stopped: list[str]) -> None:
    """Add what was stopped to the record the next run reports (written whole: renamed into place)."""
    ended = datetime.now(timezone.utc).isoformat(timespec="seconds")
    entries = [*_read(state / RECORD), {"run_pid": run_pid, "stopped_at": ended, "stopped": stopped}]
    staging = state / f".{RECORD}.{os.getpid()}"
    staging.write_text(json.dumps(entries, indent=1))
    os.replace(staging, state / RECORD)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
