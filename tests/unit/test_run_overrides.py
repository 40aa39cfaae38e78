"""`chatgraft run --set`: validated, its inputs checked and the project taken before params.yaml is written, so a
refused or busy run leaves the file byte for byte as it was; the flow it starts reuses the lock it took."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import _check_inputs, _write_overrides, app
from flows.params_file import apply_overrides
from flows.workspace import workspace_lock
from tests.unit.test_workspace import HOLD  # a process holding the workspace

REPO = Path(__file__).resolve().parents[2]
RUN = """
import sys
from flows.cli import _check_inputs, _write_overrides, app
from flows.params_file import apply_overrides
try:
    app(sys.argv[1:])
finally:
    print("prefect imported:", "prefect" in sys.modules, file=sys.stderr)
    print("torch imported:", "torch" in sys.modules, file=sys.stderr)
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder holding the repository's params.yaml."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
    return root


@pytest.fixture
def busy(project: Path):
    """Another process holding the project, as a running flow would."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(project)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait()


def _run(project: Path, *args: str) -> SimpleNamespace:
    result = CliRunner().invoke(app, ["run", "--project-dir", str(project), *args])
    return SimpleNamespace(code=result.exit_code, out=result.stdout, err=result.stderr)


def test_a_schema_invalid_override_is_refused_and_writes_nothing(project: Path) -> None:
    before = (project / "params.yaml").read_bytes()
    result = _run(project, "--set", "cp.steps=5", "--set", "cp.batch_size=0")
    assert result.code == 2 and "cp.batch_size: Input should be greater than or equal to 1" in result.err
    assert (project / "params.yaml").read_bytes() == before


def test_an_override_naming_a_missing_input_is_refused_and_writes_nothing(project: Path) -> None:
    before = (project / "params.yaml").read_bytes()
    result = _run(project, "--set", "cp.steps=5", "--set", "eval.sets.instruction=/nope.jsonl")
    assert result.code == 2 and "eval.sets.instruction: /nope.jsonl: no such file" in result.err
    assert (project / "params.yaml").read_bytes() == before


def test_no_wait_on_a_busy_project_refuses_before_prefect_and_writes_nothing(project: Path, busy) -> None:
    before = (project / "params.yaml").read_bytes()
    result = subprocess.run([sys.executable, "-c", RUN, "run", "--project-dir", str(project), "--no-wait",
                             "--set", "cp.steps=5"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 3, result.stderr
    assert "is busy: flow run brave-otter (1234) (pid" in result.stderr
    assert "prefect imported: False" in result.stderr
    assert "torch imported: False" in result.stderr  # refused before the input check loads torch
    assert (project / "params.yaml").read_bytes() == before


def test_a_waiting_run_says_so_on_the_terminal_and_gives_up_writing_nothing(project: Path, busy) -> None:
    before = (project / "params.yaml").read_bytes()
    result = _run(project, "--set", "flow.workspace_wait_seconds=1", "--set", "cp.steps=5")
    assert result.code == 3, result.err
    assert "waiting for the workspace" in result.err and "brave-otter" in result.err
    assert "waited 1 s" in result.err  # the overridden wait, not params.yaml's
    assert (project / "params.yaml").read_bytes() == before


def test_an_edit_made_while_the_run_waited_is_kept(project: Path) -> None:
    wanted = _check_inputs(project, ["cp.steps=5"])
    apply_overrides(project / "params.yaml", ["cp.batch_size=3"])  # the run before it, or a person
    _write_overrides(project, ["cp.steps=5"], wanted)
    cp = yaml.safe_load((project / "params.yaml").read_text())["cp"]
    assert (cp["steps"], cp["batch_size"]) == (5, 3)


@pytest.fixture
def fake_flow(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """flows.retrain with a `retrain` that does what the flow does with the lock, and records what it saw."""
    seen: list[dict] = []

    def retrain(project_dir: str, stage_logs: bool, workspace_held: bool) -> SimpleNamespace:
        root = Path(project_dir)
        with workspace_lock(root, "flow run fake-flow (1)", 60, print, poll_seconds=60, held=workspace_held):
            seen.append({"steps": yaml.safe_load((root / "params.yaml").read_text())["cp"]["steps"],
                         "holder": (root / ".chatgraft" / "run.json").read_text()})
        return SimpleNamespace(leaderboard="the leaderboard")

    module = ModuleType("flows.retrain")
    module.retrain = retrain
    monkeypatch.setitem(sys.modules, "flows.retrain", module)
    previous = signal.getsignal(signal.SIGTERM)  # `run` sets its own handler
    yield seen
    signal.signal(signal.SIGTERM, previous)


def test_the_flow_runs_on_the_written_overrides_in_the_lock_its_process_took(project: Path, fake_flow) -> None:
    result = _run(project, "--verbose", "--set", "cp.steps=5")
    assert result.code == 0, result.err
    assert "the leaderboard" in result.out
    (seen,) = fake_flow
    assert seen["steps"] == 5 and "fake-flow" in seen["holder"]
    assert not (project / ".chatgraft" / "run.json").exists()  # released when the run ended
