"""`dvc repro cp` killed with SIGKILL mid-training continues from its last complete checkpoint on the next run,
and ends where an uninterrupted run ends: a bare `dvc repro` of a fresh project, every stage to the leaderboard."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import make_project

pytestmark = pytest.mark.integration

CP_STEPS, SAVE_EVERY = 60, 10


def _repro(root: Path, *targets: str) -> subprocess.Popen:
    """`dvc repro [targets]` in its own process group, with this interpreter's environment first on PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.Popen([sys.executable, "-m", "dvc", "repro", *targets], cwd=root, start_new_session=True,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _complete_checkpoints(root: Path) -> list[int]:
    markers = (root / "checkpoints" / "cp").glob("*/chatgraft-complete.json")
    return sorted(int(marker.parent.name.split("-")[1]) for marker in markers)


def _finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output


def test_killed_cp_resumes_and_matches_an_uninterrupted_run(tmp_path: Path, tiny_params: dict) -> None:
    tiny_params["cp"] |= {"steps": CP_STEPS, "save_every": SAVE_EVERY}
    killed = make_project(tmp_path / "killed", tiny_params)
    process = _repro(killed, "cp")
    deadline = time.monotonic() + 600
    while not _complete_checkpoints(killed) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, process.communicate()[0]  # still training when the checkpoint appeared
    os.killpg(process.pid, signal.SIGKILL)  # dvc and the stage it runs
    process.wait()
    saved = _complete_checkpoints(killed)
    assert saved and saved[-1] < CP_STEPS, f"no checkpoint before the end: {saved}"
    assert not (killed / "models" / "cp" / "config.json").exists()  # the model appears only when training ends

    _finish(_repro(killed, "cp"))
    resumed = json.loads((killed / "reports" / "cp.json").read_text())
    assert resumed["resumed_from_step"] >= saved[-1] and resumed["steps"] == CP_STEPS
    assert _complete_checkpoints(killed) == []  # cleared once the model is written

    tiny_params["merge"]["ratios"] = [1.0]  # cp is what is compared: one merge branch is enough for the whole DAG
    straight = make_project(tmp_path / "straight", tiny_params)  # as a fresh clone: a bare `dvc repro`, every stage
    _finish(_repro(straight))
    assert json.loads((straight / "metrics" / "leaderboard.json").read_text())["winner"]["name"]
    reference = json.loads((straight / "reports" / "cp.json").read_text())
    assert reference["resumed_from_step"] == 0
    assert abs(resumed["valid_loss"] - reference["valid_loss"]) < 1e-3
    assert abs(resumed["train_loss"] - reference["train_loss"]) < 1e-3
