"""Nothing survives its run: a `chatgraft run` killed with SIGKILL by its pid alone (as the OOM killer does) while its
Prefect server starts, inside cp, and inside an evaluation leaves no process behind within seconds (its watchdog
stops the server, DVC and the stage's command), and the next run says what was stopped. A run sent SIGTERM, to its
whole process group, exits within seconds with its flow run marked Crashed. One project, one run after the other.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from flows.watchdog import MARK, RECORD, take_record, watchdog
from flows.workspace import STATE_DIR
from tests.conftest import ONE_BRANCH_PARAMS, make_project, wait_until
from tests.integration.test_crash_recovery import descendants, prefect_state, start, still_running

pytestmark = pytest.mark.integration
GONE_SECONDS = 15  # what a killed run started may outlive it by
STOP_SECONDS = 10  # how long a run sent SIGTERM may take to exit
REPORT = "processes left running, stopped by their run's watchdog: "
KILL_POINTS = {  # where a run is killed: its Prefect server starting, inside cp, inside an evaluation
    "prefect": lambda log, commands: any(" -m uvicorn " in command for command in commands),
    "cp": lambda log, commands: "Running stage 'cp'" in log.read_text(),
    "evaluate": lambda log, commands: "Running stage 'evaluate@" in log.read_text(),
}
# A run as its watchdog sees it: a child seen at the watchdog's polls, and one started just before the kill
FAKE_RUN = """
import subprocess, sys, time
from pathlib import Path
from flows.watchdog import watchdog
with watchdog(Path(sys.argv[1])):
    sleep = [sys.executable, "-c", "import time; time.sleep(600)"]
    subprocess.Popen(sleep)
    time.sleep(1.5)
    print(subprocess.Popen(sleep).pid, flush=True)
    time.sleep(600)
"""


@dataclass
class Followed:
    """A run followed to a point: its output, and the processes it had started by then with their commands."""

    point: str
    process: subprocess.Popen
    log: Path
    tree: dict[int, psutil.Process]
    commands: list[str]

    def server_port(self) -> int | None:
        """The port of the run's Prefect server (its command names it)."""
        found = [re.search(r" -m uvicorn .* --port (\d+)", command) for command in self.commands]
        return next((int(match.group(1)) for match in found if match), None)


def command(process: psutil.Process) -> str:
    """Its command line ("" once it is gone)."""
    with suppress(psutil.Error):
        return " ".join(process.cmdline())
    return ""


def answers(port: int) -> bool:
    """Whether something listens on `port` of 127.0.0.1."""
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def stop(processes: list[psutil.Process]) -> None:
    """SIGKILL, each by its pid, what a failed check left running."""
    for process in processes:
        if still_running([process]):
            with suppress(psutil.NoSuchProcess):
                process.kill()


def follow(root: Path, point: str, name: str) -> Followed:
    """Start a run, its output in `name`.log, and follow its process tree until it reaches `point`."""
    log = root.parent / f"{name}.log"
    process = start(root, log)
    tree: dict[int, psutil.Process] = {}

    def reached() -> bool:
        tree.update(descendants(process))
        return KILL_POINTS[point](log, [command(p) for p in tree.values()]) or process.poll() is not None

    try:
        wait_until(reached, f"the run to reach {point}", seconds=300, interval=0.05)
    finally:
        tree.update(descendants(process))
    if process.poll() is not None:
        stop(list(tree.values()))
        pytest.fail(f"the run ended before {point}:\n{log.read_text()[-3000:]}")
    return Followed(point, process, log, tree, [command(p) for p in tree.values()])


def left_after(processes: list[psutil.Process], seconds: float) -> list[str]:
    """What of `processes` still runs `seconds` from now (sooner when none does); stopped then."""
    deadline = time.monotonic() + seconds
    while still_running(processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = still_running(processes)
    stop(processes)
    return left


@dataclass
class Killed:
    """A run killed at a point, and what of it still ran GONE_SECONDS after."""

    run: Followed
    left: list[str]


def kill_at(root: Path, point: str) -> Killed:
    """SIGKILL a run at `point` by its pid only, as the OOM killer does."""
    run = follow(root, point, f"killed-at-{point}")
    run.process.kill()
    run.process.wait()
    return Killed(run, left_after(list(run.tree.values()), GONE_SECONDS))


def reported(log: Path) -> str:
    """The line of a run's log that says what watchdogs of killed runs stopped."""
    return next((line for line in log.read_text().splitlines() if REPORT in line), "")


def test_a_watchdog_stops_what_its_killed_run_started_and_records_it(tmp_path: Path) -> None:
    """Even a process the run started just before its kill, which the watchdog finds by the run's mark."""
    run = subprocess.Popen([sys.executable, "-c", FAKE_RUN, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        last = int(run.stdout.readline())
        started = list(descendants(run).values())
    finally:
        run.kill()
        run.wait()
    left = left_after(started, GONE_SECONDS)
    assert last in [p.pid for p in started] and len(started) == 3  # the watchdog, two sleepers
    assert not left
    stopped = take_record(tmp_path / STATE_DIR)
    assert len(stopped) == 2 and any(f"(pid {last})" in line and "time.sleep(600)" in line for line in stopped)
    assert not take_record(tmp_path / STATE_DIR)  # reported once


def test_a_run_that_ends_stands_its_watchdog_down(tmp_path: Path) -> None:
    with watchdog(tmp_path):
        (guard,) = [child for child in psutil.Process().children() if "flows.watchdog" in command(child)]
    assert not still_running([guard]) and MARK not in os.environ and not (tmp_path / STATE_DIR / RECORD).exists()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("killed") / "project", ONE_BRANCH_PARAMS)


@pytest.fixture(scope="module")
def killed(project: Path) -> list[Killed]:
    return [kill_at(project, point) for point in KILL_POINTS]


def test_nothing_of_a_killed_run_remains(killed: list[Killed]) -> None:
    for kill in killed:
        where, port = kill.run.point, kill.run.server_port()
        assert port is not None, f"killed at {where}: no Prefect server seen: {kill.run.commands}"
        assert not kill.left, f"killed at {where}, still running {GONE_SECONDS} s later: {kill.left}"
        assert not answers(port), f"killed at {where}: its Prefect server still answers on port {port}"
        assert any("-m flows.watchdog" in command for command in kill.run.commands)  # gone too


def test_the_next_run_says_what_the_watchdog_stopped(killed: list[Killed]) -> None:
    for before, after in zip(killed, killed[1:]):
        assert f"--port {before.run.server_port()} " in reported(after.run.log), \
            f"the run after the one killed at {before.run.point} did not report its server"
    stage = reported(killed[2].run.log)
    assert "dvc repro --single-item cp" in stage and "pipelines cp" in stage


def test_sigterm_to_the_group_ends_the_run_in_seconds(project: Path, killed: list[Killed]) -> None:
    """SIGTERM to the run's group (`kill -TERM -PGID`, like Ctrl-C): its Prefect server, in a session of its own,
    serves until the run has marked its runs Crashed, and the run exits within seconds."""
    run = follow(project, "evaluate", "sigterm")
    os.killpg(run.process.pid, signal.SIGTERM)  # the run leads its group: DVC and the stage get it too
    try:
        status = run.process.wait(timeout=STOP_SECONDS)
    finally:
        left = left_after(list(run.tree.values()), GONE_SECONDS)
        run.process.kill()
        run.process.wait()
    assert status == 128 + signal.SIGTERM
    assert not left
    assert "pipelines evaluate" in reported(run.log)  # what the run killed inside an evaluation left
    assert not (project / STATE_DIR / RECORD).exists()  # this run stopped its processes itself
    assert re.search(r"Flow run '[^']+' - Finished in state Crashed", run.log.read_text())
    assert "RUNNING" not in [kind for _, kind in prefect_state(project)["flow_runs"]]
