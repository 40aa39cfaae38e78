"""A crash never wedges the schedule: the flow's process group is killed with SIGKILL inside each kind of step (CP
between checkpoints, a stage's command, registration, promotion, the push), in one chain of runs on the embedded
default (ephemeral Prefect, sqlite MLflow); each next run finds what the killed one left, closes it, and goes on.
Then SIGTERM, what schedulers send, ends a run cleanly.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable
from contextlib import closing, suppress
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow import MlflowClient

from flows.recovery import FOUND_BY_TAG
from flows.tracking.store import embedded_uri
from pipelines.atomic import output_kind
from pipelines.merge.chat_vector import MERGED_MODEL
from tests.conftest import ONE_BRANCH_PARAMS, TINY_PARAMS, make_project, wait_until
from tests.unit.test_atomic_outputs import HALFWAY

pytestmark = pytest.mark.integration
MODEL = "chatgraft-chat"
PARAMS = {**ONE_BRANCH_PARAMS,
          "cp": {**TINY_PARAMS["cp"], "steps": 40, "save_every": 10},  # killed after a checkpoint: the rerun resumes
          "flow": {**TINY_PARAMS["flow"], "slot_wait_seconds": 120.0}}
CHATGRAFT = str(Path(sys.executable).parent / "chatgraft")
# Prefect state: the slots each limit counts, the flow runs and their states (read by a process with the env)
PREFECT_STATE = """
import json
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as client:
    limits = {l.name: l.active_slots for l in client.read_global_concurrency_limits()}
    runs = [(r.name, r.state.type.value) for r in client.read_flow_runs()]
print(json.dumps({"slots": limits, "flow_runs": runs}))
"""


def environment(root: Path) -> dict[str, str]:
    """The embedded default, with a Prefect home of the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "MLFLOW_TRACKING_URI"))}
    return {**env, "PREFECT_HOME": str(root.parent / "prefect-home"), "PYTHONUNBUFFERED": "1"}


def start(root: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([CHATGRAFT, "run", "--verbose", "--project-dir", str(root)], env=environment(root),
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def mlflow_client(root: Path) -> MlflowClient:
    return MlflowClient(embedded_uri(root), embedded_uri(root))


def mlflow_run_started(root: Path, name: str) -> bool:
    """Whether an MLflow run `name` is RUNNING, read straight from the sqlite store (which the flow's process may
    still be creating: an MlflowClient here would race its migrations)."""
    db = root / "mlflow" / "mlflow.db"
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as store:
            return bool(store.execute("select 1 from runs where name = ? and status = 'RUNNING'", (name,)).fetchone())
    except sqlite3.OperationalError:  # no store or tables yet, or busy: look again
        return False


def started(root: Path, log: Path, step: str) -> bool:
    """Whether the run is inside `step`: CP has written a checkpoint; a stage's command runs; the register run
    is open; the task before promote or push has finished."""
    text = log.read_text() if log.exists() else ""
    if step == "cp":
        return any((root / "checkpoints" / "cp").glob("checkpoint-*"))
    if step == "register":
        return mlflow_run_started(root, "register")
    if step in ("promote", "push"):
        before = {"promote": "register", "push": "promote"}[step]
        return re.search(rf"Task run '{before}-[^']*' - Finished", text) is not None
    return f"Running stage '{step}'" in text


def descendants(process: subprocess.Popen) -> dict[int, psutil.Process]:
    """The processes under `process` now (a Process keeps its start time: a pid used again is not taken for it)."""
    try:
        return {child.pid: child for child in psutil.Process(process.pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return {}


def still_running(processes: Iterable[psutil.Process]) -> list[str]:
    """Those of `processes` still running (a zombie is over), as `pid command`."""
    running = []
    for process in processes:
        with suppress(psutil.NoSuchProcess):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                running.append(f"{process.pid} {' '.join(process.cmdline())[:200]}")
    return running


def kill_inside(root: Path, step: str, rng: random.Random) -> None:
    """SIGKILL the run's process group inside `step`; then nothing the run started may remain: its Prefect server,
    in a session of its own, is stopped by the run's watchdog."""
    log = root.parent / f"killed-in-{step}.log"
    process = start(root, log)
    tree: dict[int, psutil.Process] = {}

    def inside() -> bool:
        tree.update(descendants(process))
        return started(root, log, step) or process.poll() is not None

    try:
        wait_until(inside, f"step {step}", seconds=300, interval=0.1)
        assert process.poll() is None, f"the run ended before {step}:\n{log.read_text()[-3000:]}"
        time.sleep(rng.uniform(0.0, 0.5 if step in ("promote", "push") else 1.0))
        tree.update(descendants(process))
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    wait_until(lambda: not working_in(root) and not still_running(tree.values()),
               f"the processes of the run killed in {step} to end", seconds=10, interval=0.2)


def kill_a_writer_halfway(target: Path) -> None:
    """SIGKILL a process halfway through writing `target` as the stages do (a merge killed at its last file)."""
    process = subprocess.Popen([sys.executable, "-c", HALFWAY, str(target)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    process.kill()
    process.wait()


def working_in(root: Path) -> list[str]:
    """Command lines of the processes whose working directory is the project (a stage, DVC, the flow)."""
    found = []
    for process in psutil.process_iter(["cwd", "cmdline"]):
        cwd = process.info["cwd"]
        if cwd and Path(cwd).is_relative_to(root):
            found.append(" ".join(process.info["cmdline"] or []))
    return found


def prefect_state(root: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", PREFECT_STATE], env=environment(root), capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def crashed_chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """Runs killed inside cp, merge, register, promote and push, each after the last; then one that is left alone.
    (Evaluate and align are stage commands as merge is; their outputs' atomicity is tested in the unit tests.)"""
    root = make_project(tmp_path_factory.mktemp("crash") / "project", PARAMS)
    rng = random.Random(21)
    for step in ("cp", "merge@1.0", "register", "promote", "push"):
        kill_inside(root, step, rng)
    kill_a_writer_halfway(root / "models" / "merged" / "alpha-1.0")
    final = subprocess.run([CHATGRAFT, "run", "--verbose", "--project-dir", str(root)], env=environment(root),
                           capture_output=True, text=True, timeout=900)
    return root, final


def test_the_run_after_the_kills_completes(crashed_chain) -> None:
    root, final = crashed_chain
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    assert "closed what killed runs left" in final.stdout + final.stderr
    assert "half-written outputs removed: models/merged/.alpha-1.0." in final.stdout + final.stderr
    assert not [p.name for p in (root / "models" / "merged").iterdir() if p.name.startswith(".")]


def test_each_stage_was_reproduced_once_and_nothing_registered_twice(crashed_chain) -> None:
    root, _ = crashed_chain
    client = mlflow_client(root)
    experiment = client.get_experiment_by_name("chatgraft")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    reproduced = [r.info.run_name for r in runs
                  if r.data.tags.get("cached") == "false" and r.info.status == "FINISHED"]
    assert sorted(reproduced) == sorted(set(reproduced))  # no stage finished twice: only what was missing ran
    versions = client.search_model_versions(f"name = '{MODEL}'")
    hashes = [v.tags.get("dvc_model_md5") for v in versions]
    assert None not in hashes and len(hashes) == len(set(hashes))
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.tags["promotion.decision"].startswith("promoted")


def test_nothing_is_left_running_or_held(crashed_chain) -> None:
    root, _ = crashed_chain
    client = mlflow_client(root)
    experiment = client.get_experiment_by_name("chatgraft")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert failed and all(FOUND_BY_TAG in r.data.tags for r in failed)
    state = prefect_state(root)
    assert state["slots"] == {"tag:gpu": 0, "chatgraft-promotion": 0}
    kinds = [kind for _, kind in state["flow_runs"]]
    assert kinds.count("CRASHED") == 5 and kinds.count("COMPLETED") == 1 and "RUNNING" not in kinds


def test_sigterm_ends_a_run_cleanly(crashed_chain) -> None:
    root, _ = crashed_chain
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["merge"]["ratios"] = [1.0, 0.9]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = root.parent / "sigterm.log"
    process = start(root, log)
    wait_until(lambda: started(root, log, "merge@0.9"), "merge@0.9", seconds=300, interval=0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 128 + signal.SIGTERM  # in seconds: see test_killed_run_leaves_nothing.py
    client = mlflow_client(root)
    experiment = client.get_experiment_by_name("chatgraft")
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
    assert not runs  # the run ended its own MLflow runs, FAILED, without waiting for the next run
    state = prefect_state(root)
    assert state["slots"]["tag:gpu"] == 0 and "RUNNING" not in [kind for _, kind in state["flow_runs"]]
    merged = root / "models" / "merged"
    assert not [p.name for p in merged.iterdir() if p.name.startswith(".alpha-0.9.")]  # no half-written staging
    # the merge was stopped (most often while importing), or had just replaced its output: never half a model
    assert not (merged / "alpha-0.9").exists() or output_kind(merged / "alpha-0.9") == MERGED_MODEL
