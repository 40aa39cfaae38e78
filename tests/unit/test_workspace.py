"""One run per workspace: a second waits saying who holds it, or refuses; a killed holder frees it at once."""
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.workspace import WorkspaceBusy, workspace_lock

HOLD = """
import logging, sys, time
from pathlib import Path
from flows.workspace import workspace_lock
with workspace_lock(Path(sys.argv[1]), "brave-otter (1234)", 0, logging.getLogger()):
    print("held", flush=True)
    time.sleep(600)
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
        with workspace_lock(tmp_path, "second", 0, logging.getLogger()):
            pass
    assert time.monotonic() - start < 5


def test_a_waiting_run_says_who_holds_it_then_gives_up(tmp_path: Path, holder, caplog) -> None:
    caplog.set_level(logging.INFO)
    with pytest.raises(WorkspaceBusy, match="waited 2 s"):
        with workspace_lock(tmp_path, "second", 1.5, logging.getLogger("test"), poll_seconds=0.5):
            pass
    assert "waiting for the workspace" in caplog.text and "brave-otter" in caplog.text


def test_a_killed_holder_leaves_the_workspace_free(tmp_path: Path, holder) -> None:
    holder.kill()  # SIGKILL: no cleanup ran; the operating system dropped the lock
    holder.wait()
    with workspace_lock(tmp_path, "next", 0, logging.getLogger()):
        assert "next" in (tmp_path / ".chatgraft" / "run.json").read_text()
    assert not (tmp_path / ".chatgraft" / "run.json").exists()
