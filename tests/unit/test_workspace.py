"""One run per workspace: a second waits saying who holds it, or refuses; a killed holder frees it at once; the
flow that `chatgraft run` starts names itself the holder of the lock its process took, without taking it again."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.workspace import WorkspaceBusy, workspace_lock

HOLD = """
import sys, time
from pathlib import Path
from flows.workspace import workspace_lock
with workspace_lock(Path(sys.argv[1]), "flow run brave-otter (1234)", 0, print):
    print("held", flush=True)
    time.sleep(600)
"""
TRY = """
import sys
from pathlib import Path
from flows.workspace import WorkspaceBusy, workspace_lock
try:
    with workspace_lock(Path(sys.argv[1]), "another process", 0, print):
        print("free")
except WorkspaceBusy as error:
    print(error)
"""


@pytest.fixture
def holder(tmp_path: Path):
    """Another process holding the workspace (as a running flow would)."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait()


def test_a_second_run_refuses_at_once_naming_the_holder(tmp_path: Path, holder) -> None:
    start = time.monotonic()
    with pytest.raises(WorkspaceBusy, match=r"flow run brave-otter \(1234\) \(pid \d+ on .*\) since 20"):
        with workspace_lock(tmp_path, "second", 0, print):
            pass
    assert time.monotonic() - start < 5


def test_a_waiting_run_says_who_holds_it_at_once_and_every_poll_then_gives_up(tmp_path: Path, holder) -> None:
    start, said = time.monotonic(), []
    with pytest.raises(WorkspaceBusy, match="waited 2 s"):
        with workspace_lock(tmp_path, "second", 1.5, lambda line: said.append((time.monotonic() - start, line)),
                            poll_seconds=0.5):
            pass
    assert said[0][0] < 0.4  # at once, not after the first poll
    assert len(said) >= 3 and all("waiting for the workspace" in line and "brave-otter" in line for _, line in said)


def test_a_killed_holder_leaves_the_workspace_free(tmp_path: Path, holder) -> None:
    holder.kill()  # SIGKILL: no cleanup ran; the operating system dropped the lock
    holder.wait()
    with workspace_lock(tmp_path, "next", 0, print):
        assert "next" in (tmp_path / ".chatgraft" / "run.json").read_text()
    assert not (tmp_path / ".chatgraft" / "run.json").exists()


def _other_process_tries(root: Path) -> str:
    return subprocess.run([sys.executable, "-c", TRY, str(root)], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_flow_started_by_the_holding_process_renames_the_holder_without_waiting(tmp_path: Path) -> None:
    holder_file = tmp_path / ".chatgraft" / "run.json"
    with workspace_lock(tmp_path, "chatgraft run, starting its flow", 0, print):
        since = json.loads(holder_file.read_text())["since"]
        start = time.monotonic()
        with workspace_lock(tmp_path, "flow run brave-otter (1234)", 60, print, poll_seconds=60, held=True):
            assert time.monotonic() - start < 1  # a second FileLock in this process would wait the whole 60 s
            named = json.loads(holder_file.read_text())
            assert (named["run"], named["pid"], named["since"]) == ("flow run brave-otter (1234)", os.getpid(), since)
            assert "flow run brave-otter (1234)" in _other_process_tries(tmp_path)  # still held, by the flow now
        assert "brave-otter" in _other_process_tries(tmp_path)  # the process that took it releases it
    assert _other_process_tries(tmp_path) == "free"


def test_held_is_refused_when_this_process_does_not_hold_the_workspace(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="does not hold it"):
        with workspace_lock(tmp_path, "flow run brave-otter (1234)", 0, print, held=True):
            pass
