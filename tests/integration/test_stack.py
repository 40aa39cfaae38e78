"""The server stack for real, started as processes by infra/local/stack.py: the machine's PostgreSQL, moto as S3,
`mlflow server`, `prefect server start`. The flow runs against it through the environment switch alone."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import psycopg2
import pytest
import requests
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.conftest import (
    ONE_BRANCH_PARAMS, REPO, TINY_PARAMS, free_port, free_port_base, make_project, run, wait_until,
)

pytestmark = pytest.mark.integration
POSTGRES = os.environ.get("CHATGRAFT_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
STACK = [sys.executable, str(REPO / "infra" / "local" / "stack.py")]


def require_postgres() -> None:
    """Skip (with the reason) where no PostgreSQL answers; fail instead where CI says one must."""
    try:
        psycopg2.connect(f"{POSTGRES}/postgres", connect_timeout=3).close()
    except psycopg2.OperationalError as error:
        reason = f"no PostgreSQL at {POSTGRES} ({str(error).strip()}); the server-stack tests need one"
        if os.environ.get("CHATGRAFT_REQUIRE_POSTGRES"):
            pytest.fail(reason + " and CHATGRAFT_REQUIRE_POSTGRES is set")
        pytest.skip(reason)


def query(database: str, sql: str) -> list[tuple]:
    with psycopg2.connect(f"{POSTGRES}/{database}") as connection, connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchall()


def read_env(path: Path) -> dict[str, str]:
    return dict(line.removeprefix("export ").split("=", 1) for line in path.read_text().splitlines())


def stack_up(name: str, state: Path, project: Path, *extra: str) -> dict[str, str]:
    run([*STACK, "up", "--name", name, "--state", str(state), "--project", str(project), *extra], project)
    return read_env(state / "env")


def stack_down(name: str, state: Path, project: Path) -> None:
    run([*STACK, "down", "--name", name, "--state", str(state), "--project", str(project), "--drop"], project)


@dataclass
class FaultChain:
    """What the stack fixture's three runs left to check: logs, exit codes and readings taken between them."""
    killed_log: str
    running_after_kill: int
    s3_down_code: int
    s3_down_log: str
    s3_down_status: str
    restart_code: int
    restart_log: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str], str, FaultChain]]:
    """A tiny project, the stack up for it, and three faults in three `chatgraft run`s against it: the first run's
    process group is killed inside a merge; the next meets S3 down while pushing; the last, with the MLflow server
    restarted in its middle, completes. The tests read the servers, the project and the chain's readings after."""
    require_postgres()
    name = f"cgtest{os.getpid()}"
    root = make_project(tmp_path_factory.mktemp("stack") / "project", ONE_BRANCH_PARAMS)
    state = root.parent / "stack-state"
    try:
        env = stack_up(name, state, root, "--port-base", str(free_port_base(3)))
        yield root, env, name, fault_chain(root, env, name)
    finally:
        stack_down(name, state, root)


def fault_chain(root: Path, env: dict[str, str], name: str) -> FaultChain:
    """The three runs, each after the last, with what each left recorded."""
    log = root.parent / "killed.log"
    killed = chatgraft_run(root, env, log=log)
    try:
        wait_until(lambda: "Running stage 'merge@1.0'" in log.read_text() or killed.poll() is not None,
                   "merge@1.0", seconds=600, interval=0.1)
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
    killed_log = log.read_text()
    running = query(f"{name}_mlflow", "SELECT count(*) FROM runs WHERE status = 'RUNNING'")[0][0]

    config_local = root / ".dvc" / "config.local"
    working = config_local.read_text()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: S3 is down for DVC
    run([sys.executable, "-m", "dvc", "remote", "modify", "--local", "stack", "endpointurl", dead], root)
    log = root.parent / "s3-down.log"
    s3_down = chatgraft_run(root, env, log=log)
    s3_down_code = s3_down.wait(timeout=900)
    s3_down_log, status = log.read_text(), run([sys.executable, "-m", "dvc", "status"], root)

    config_local.write_text(working)
    log = root.parent / "mlflow-restart.log"
    # no retries inside the MLflow client: the outage must reach a task, whose retry takes over. A restart takes
    # 15 to 35 s here: the run must still have tasks that talk to MLflow when it goes down, so its evaluations are
    # made stale (every stage up to date, the run was over before the server stopped, and its own end met the outage)
    stale = f"eval.max_new_tokens={TINY_PARAMS['eval']['max_new_tokens'] + 1}"
    flow = chatgraft_run(root, {**env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}, "flow.retry_delay_seconds=25.0", stale,
                         log=log)
    deadline = time.monotonic() + 300
    while "Task run 'corpus'" not in log.read_text() and flow.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    run([*STACK, "restart", "mlflow", "--state", str(root.parent / "stack-state"), "--down-seconds", "2"], root)
    restart_code = flow.wait(timeout=900)
    return FaultChain(killed_log, running, s3_down_code, s3_down_log, status, restart_code, log.read_text())


def s3(env: dict[str, str]):
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def keys(env: dict[str, str], bucket: str, prefix: str) -> list[str]:
    pages = s3(env).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_runs_registry_and_flow_runs_live_in_postgres(stack) -> None:
    root, env, name, _ = stack
    assert query(f"{name}_mlflow", "SELECT count(*) FROM runs")[0][0] >= 12  # the flow's run and one per stage
    assert ("chatgraft-chat",) in query(f"{name}_mlflow", "SELECT name FROM registered_models")
    assert ("champion",) in query(f"{name}_mlflow", "SELECT alias FROM registered_model_aliases")
    assert ("COMPLETED",) in query(f"{name}_prefect", "SELECT state_type FROM flow_run WHERE name IS NOT NULL")
    assert not (root / "mlflow" / "mlflow.db").exists()  # nothing went to the embedded store


def test_model_artifacts_are_in_the_bucket(stack) -> None:
    _, env, name, _ = stack
    stored = keys(env, name, "mlflow/")
    assert any(key.endswith(".safetensors") for key in stored)
    assert any(key.endswith("MLmodel") for key in stored)


def test_credentials_are_never_logged(stack) -> None:
    _, env, _, _ = stack
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("chatgraft")
    for logged in client.search_runs([experiment.experiment_id]):
        values = [*logged.data.params.values(), *logged.data.tags.values()]
        assert not any(env["AWS_SECRET_ACCESS_KEY"] in value for value in values)
    root = stack[0]
    assert env["AWS_SECRET_ACCESS_KEY"] not in (root / ".dvc" / "config").read_text()
    assert "config.local" in (root / ".dvc" / ".gitignore").read_text()  # where an endpoint or key may go


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dvc_pull_in_a_fresh_clone_restores_the_models(stack, tmp_path: Path) -> None:
    root, env, name, _ = stack
    assert any(key.startswith("dvc/") for key in keys(env, name, "dvc/"))  # the flow pushed
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm", "run"], root)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], tmp_path)
    (clone / ".dvc" / "config.local").write_text((root / ".dvc" / "config.local").read_text())  # not in git
    done = subprocess.run([sys.executable, "-m", "dvc", "pull"], cwd=clone, env={**os.environ, **env},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert tree_digest(clone / "models") == tree_digest(root / "models")
    assert tree_digest(clone / "data") == tree_digest(root / "data")


def chatgraft_run(root: Path, env: dict[str, str], *overrides: str, log: Path) -> subprocess.Popen:
    """`chatgraft run --verbose` (every stage's output and Prefect's log, which the faults are timed by) against the
    stack in the background, output to `log`."""
    sets = [arg for override in overrides for arg in ("--set", override)]
    command = [str(Path(sys.executable).parent / "chatgraft"), "run", "--verbose", "--project-dir", str(root), *sets]
    return subprocess.Popen(command,
                            env={**os.environ, **env}, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def prefect_state(env: dict[str, str]) -> tuple[dict[str, int], list[str]]:
    """Slots each global limit counts, and the flow runs' states, as the stack's Prefect server has them."""
    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        slots = {limit.name: limit.active_slots for limit in client.read_global_concurrency_limits()}
        return slots, [run.state.type.value for run in client.read_flow_runs()]


def test_killed_run_then_s3_down_during_push_then_mlflow_restarted_mid_flow(stack) -> None:
    """A run whose process group is killed inside a merge holds a gpu slot and leaves RUNNING runs on the servers,
    which the next run closes; that run meets S3 down while pushing and fails clearly with local state intact; the
    next, with the MLflow server restarted in its middle, retries the task that hit the outage, completes and
    pushes, and nothing is left running or held."""
    root, env, name, chain = stack
    assert "Running stage 'merge@1.0'" in chain.killed_log, chain.killed_log[-3000:]
    assert chain.running_after_kill >= 2  # retrain, merge

    assert chain.s3_down_code != 0
    assert "Retry 2/2" in chain.s3_down_log and "`dvc push` failed" in chain.s3_down_log
    assert "closed what killed runs left" in chain.s3_down_log and "merge@1.0" in chain.s3_down_log
    assert (root / "models" / "merged" / "alpha-1.0" / "model.safetensors").exists()  # local state intact
    assert "up to date" in chain.s3_down_status

    assert chain.restart_code == 0, chain.restart_log[-4000:]
    assert "Retry 1/2" in chain.restart_log and "Finished in state Completed()" in chain.restart_log
    in_sync = subprocess.run([sys.executable, "-m", "dvc", "status", "--cloud"], cwd=root, env={**os.environ, **env},
                             capture_output=True, text=True)
    assert in_sync.returncode == 0 and "in sync" in in_sync.stdout, in_sync.stdout + in_sync.stderr
    assert not query(f"{name}_mlflow", "SELECT name FROM runs WHERE status = 'RUNNING'")
    slots, flow_runs = prefect_state(env)
    assert slots == {"tag:gpu": 0, "chatgraft-promotion": 0}
    assert flow_runs.count("CRASHED") == 1 and "RUNNING" not in flow_runs


def test_basic_auth_refuses_a_client_without_credentials(tmp_path: Path) -> None:
    require_postgres()
    name = f"cgauth{os.getpid()}"
    root = make_project(tmp_path / "project", TINY_PARAMS)
    try:
        env = stack_up(name, tmp_path / "state", root, "--basic-auth", "--port-base", str(free_port_base(3)))
        url = f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search"
        # generous timeouts: the auth app hashes passwords on each request, slow on a loaded 2-core machine
        assert requests.post(url, json={"max_results": 1}, timeout=60).status_code == 401
        auth = (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
        assert requests.post(url, json={"max_results": 1}, auth=auth, timeout=60).ok
        assert requests.post(url, json={"max_results": 1}, auth=("admin", "wrong"), timeout=60).status_code == 401
    finally:
        stack_down(name, tmp_path / "state", root)
