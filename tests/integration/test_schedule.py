"""The deployments on a real Prefect server (its own PREFECT_HOME): created from prefect.yaml by `chatgraft serve`,
a retrain run triggered through the API, executed by serve, Completed with its MLflow runs; its promotion emits
`chatgraft.champion.moved`, whose automation starts `check-champion` on the new champion."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
from prefect.events.filters import EventFilter, EventNameFilter
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.tracking.store import embedded_uri
from tests.conftest import ONE_BRANCH_PARAMS, REPO, answers_health, free_port, make_project, wait_until

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def start(command: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="module")
def server_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`prefect server start` with a temporary PREFECT_HOME; the environment its clients need."""
    home = tmp_path_factory.mktemp("prefect-home")
    url = f"http://127.0.0.1:{free_port()}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    port = url.rsplit(":", 1)[1].split("/")[0]
    server = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port],
                   env, home, home / "server.log")

    try:
        wait_until(lambda: answers_health(url), "prefect server")
        with temporary_settings({PREFECT_API_URL: url}):
            yield env
    finally:
        stop(server)


def test_prefect_yaml_deploys_to_a_process_pool(server_env: dict[str, str], tmp_path: Path) -> None:
    env = {**server_env, "CHATGRAFT_PROJECT_DIR": str(tmp_path)}
    for command in (["work-pool", "create", "chatgraft-process", "--type", "process"],
                    ["--no-prompt", "deploy", "--name", "retrain"]):
        done = subprocess.run([str(BIN / "prefect"), *command], env=env, cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("retrain/retrain")
    assert deployment.work_pool_name == "chatgraft-process"
    assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(tmp_path)}}]
    (schedule,) = deployment.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 3 * * 1", "Europe/Berlin")


def test_kubernetes_job_template_is_accepted_by_the_server(server_env: dict[str, str]) -> None:
    template = json.loads((REPO / "infra" / "k8s" / "base-job-template.json").read_text())
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="chatgraft-k8s", type="kubernetes", base_job_template=template))
        pool = client.read_work_pool("chatgraft-k8s")
    variables = pool.base_job_template["variables"]["properties"]
    assert variables["gpus"]["default"] == 1 and "nvidia.com/gpu" in json.dumps(variables["tolerations"])
    with pytest.raises(Exception, match="variables"):  # the server checks every placeholder has a variable
        broken = json.loads(json.dumps(template).replace('"{{ gpus }}"', '"{{ gpu_count }}"'))
        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name="broken", type="kubernetes", base_job_template=broken))


def test_served_deployment_runs_the_flow_to_completion(server_env: dict[str, str], tmp_path: Path) -> None:
    root = make_project(tmp_path / "project", ONE_BRANCH_PARAMS)
    shutil.copy(REPO / "prefect.yaml", root / "prefect.yaml")
    serving = start([str(BIN / "chatgraft"), "serve", "--project-dir", str(root)], server_env, root,
                    tmp_path / "serve.log")
    try:
        with get_client(sync_client=True) as client:
            def deployed() -> bool:
                try:
                    return client.read_deployment_by_name("retrain/retrain").parameters["project_dir"] == str(root)
                except Exception:  # not there yet (or still the deploy test's version)
                    return False

            wait_until(deployed, "served deployment")
            deployment = client.read_deployment_by_name("retrain/retrain")
        assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * 1"]

        flow_run = run_deployment("retrain/retrain", timeout=900)
        assert flow_run.state.is_completed(), (tmp_path / "serve.log").read_text()[-3000:]

        with get_client(sync_client=True) as client:  # the promotion's event started the check of the champion
            check = client.read_deployment_by_name("check-champion/check-champion")
            checks = FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[check.id]))

            def checked() -> bool:
                runs = client.read_flow_runs(flow_run_filter=checks)
                return bool(runs) and all(run.state.is_final() for run in runs)

            wait_until(checked, "check-champion run started by the champion.moved automation", seconds=300)
            (checking,) = client.read_flow_runs(flow_run_filter=checks)
            (moved,) = client.read_events(EventFilter(event=EventNameFilter(name=["chatgraft.champion.moved"])), limit=50).events
        assert checking.state.is_completed() and checking.parameters["version"] == "1", (
            (tmp_path / "serve.log").read_text()[-3000:])
        assert moved.resource.id == "mlflow.registered-model.chatgraft-chat"
        assert moved.payload["to_version"] == "1" and moved.payload["decision"] == "promoted"
    finally:
        stop(serving)

    client = MlflowClient(embedded_uri(root), embedded_uri(root))
    runs = client.search_runs([client.get_experiment_by_name("chatgraft").experiment_id])
    assert f"retrain-{flow_run.name}" in {r.info.run_name for r in runs}
    assert {"corpus", "cp", "leaderboard", "register"} <= {r.info.run_name for r in runs}
    assert str(client.get_model_version_by_alias("chatgraft-chat", "champion").version) == "1"
