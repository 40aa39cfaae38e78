"""A stage command that meets an error in the user's input ends with one marked line naming the file and key."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipelines.cli import USER_ERROR

REPO = Path(__file__).resolve().parents[2]


def test_a_bad_params_key_ends_the_stage_with_one_marked_line(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("cp:\n  stepz: 3\n")
    done = subprocess.run([sys.executable, "-m", "pipelines", "corpus"], cwd=tmp_path, capture_output=True,
                          text=True, env={"PYTHONPATH": str(REPO), "PATH": str(Path(sys.executable).parent)})
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(USER_ERROR) and "params.yaml" in last and "stepz" in last
    assert "Traceback" in done.stderr  # above it, for whoever reads the stage's log
