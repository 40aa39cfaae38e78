"""The production stack as plain processes on one machine, no docker: the machine's PostgreSQL, moto's server as
S3, `mlflow server` (Postgres backend, proxied S3 artifacts) and `prefect server start` (on Postgres).

    python infra/local/stack.py up [--basic-auth]   # start, then: source .stack/env
    python infra/local/stack.py down [--drop]       # stop every process it started (by process group id)
    python infra/local/stack.py restart mlflow --down-seconds 8   # an outage drill

`up` writes `.stack/env` (the one switch: MLFLOW_TRACKING_URI, PREFECT_API_URL, S3 endpoint and test
credentials) and points the project's DVC remote `stack` (default, in the git-ignored .dvc/config.local) at
s3://<name>/dvc on the local S3. Same services, same settings as infra/docker-compose.yml.
"""
from __future__ import annotations

import argparse
import configparser
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import psycopg2
import requests

from flows.dvc_project import DvcProject

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
POSTGRES = os.environ.get("CHATGRAFT_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
PG_DRIVER = {"mlflow": "postgresql+psycopg2://", "prefect": "postgresql+asyncpg://"}


def ports(base: int) -> dict[str, int]:
    """The services' ports: S3, MLflow and Prefect on base, base + 1, base + 2."""
    return {"s3": base, "mlflow": base + 1, "prefect": base + 2}


def _postgres(statements: list[tuple[str, tuple]]) -> list[tuple | None]:
    """Run statements on the server's `postgres` database outside a transaction (CREATE/DROP DATABASE need that)."""
    connection = psycopg2.connect(f"{POSTGRES}/postgres")
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            results = []
            for sql, args in statements:
                cursor.execute(sql, args)
                results.append(cursor.fetchone() if cursor.description else None)
            return results
    finally:
        connection.close()


def _create_databases(names: list[str]) -> None:
    existing = _postgres([("SELECT 1 FROM pg_database WHERE datname = %s", (name,)) for name in names])
    _postgres([(f'CREATE DATABASE "{name}"', ()) for name, found in zip(names, existing) if found is None])


def _drop_databases(names: list[str]) -> None:
    _postgres([(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', ()) for name in names])


def _start(service: str, command: list[str], env: dict[str, str], state: Path) -> subprocess.Popen:
    """Start a service in its own process group; its pid goes to <state>/pids.json at once, for `down`."""
    process = subprocess.Popen(command, env=env, stdout=(state / f"{service}.log").open("a"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    pids_file = state / "pids.json"
    pids = json.loads(pids_file.read_text()) if pids_file.exists() else {}
    pids_file.write_text(json.dumps({**pids, service: process.pid}))
    services = state / "services.json"  # how to start it again (`restart`); holds secrets: owner-only
    services.touch(mode=0o600)
    known = json.loads(services.read_text() or "{}")
    services.write_text(json.dumps({**known, service: {"command": command, "env": env}}))
    return process


def _stop(pid: int) -> None:
    """SIGTERM the process group, SIGKILL it after 10 s."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):  # it may exit between the last check and the kill
        os.killpg(pid, signal.SIGKILL)


def restart(service: str, state: Path, down_seconds: float) -> None:
    """Stop one service, wait `down_seconds`, start it again as before (for outage drills and tests)."""
    _stop(json.loads((state / "pids.json").read_text())[service])
    time.sleep(down_seconds)
    spec = json.loads((state / "services.json").read_text())[service]
    process = _start(service, spec["command"], spec["env"], state)
    health = {"mlflow": "/health", "prefect": "/api/health"}[service]
    port = spec["command"][spec["command"].index("--port") + 1]
    _wait(f"http://127.0.0.1:{port}{health}", process, state / f"{service}.log")


def _wait(url: str, process: subprocess.Popen, log: Path, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    what = Path(process.args[0]).name
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "\n".join(log.read_text().splitlines()[-15:])
            raise RuntimeError(f"{what} exited with {process.returncode}; the end of {log}:\n{tail}")
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or too busy starting to answer
            time.sleep(0.5)
    raise RuntimeError(f"{what} did not answer {url} within {seconds} s; its log: {log}")


def settings(name: str, port: dict[str, int], basic_auth: bool) -> dict[str, str]:
    """The environment clients need (written to <state>/env)."""
    env = {
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port['mlflow']}",
        "PREFECT_API_URL": f"http://127.0.0.1:{port['prefect']}/api",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port['s3']}",
        "AWS_ACCESS_KEY_ID": "stack-local", "AWS_SECRET_ACCESS_KEY": "stack-local-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "true",
        "CHATGRAFT_STACK_NAME": name,
    }
    if basic_auth:
        env |= {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": secrets.token_urlsafe(16)}
    return env


def up(name: str, state: Path, project: Path, basic_auth: bool, port_base: int) -> dict[str, str]:
    """Start every service, create the databases and the bucket, write <state>/env; returns that environment.
    When anything fails, whatever was started is stopped again."""
    state.mkdir(parents=True, exist_ok=True)
    try:
        return _up(name, state, project, basic_auth, ports(port_base))
    except BaseException:
        down(name, state, project, drop=False)
        raise


def _up(name: str, state: Path, project: Path, basic_auth: bool, port: dict[str, int]) -> dict[str, str]:
    client_env = settings(name, port, basic_auth)
    env = {**os.environ, **client_env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    _create_databases([f"{name}_mlflow", f"{name}_prefect"])
    s3 = _start("s3", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port["s3"])], env, state)
    _wait(client_env["AWS_ENDPOINT_URL"], s3, state / "s3.log")
    boto3.client("s3", endpoint_url=client_env["AWS_ENDPOINT_URL"], region_name=client_env["AWS_DEFAULT_REGION"],
                 aws_access_key_id=client_env["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=client_env["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=name)

    database = POSTGRES.removeprefix("postgresql://")
    mlflow = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port["mlflow"]), "--workers", "1",
              "--backend-store-uri", f"{PG_DRIVER['mlflow']}{database}/{name}_mlflow",
              "--artifacts-destination", f"s3://{name}/mlflow"]
    server_env = {**env, "MLFLOW_S3_ENDPOINT_URL": client_env["AWS_ENDPOINT_URL"]}
    if basic_auth:
        ini = state / "basic_auth.ini"
        auth = configparser.ConfigParser()
        auth.read(REPO / "mlflow" / "basic_auth.ini")  # the compose stack's settings, users kept in <state>
        auth["mlflow"]["database_uri"] = f"sqlite:///{state / 'auth.db'}"
        with ini.open("w") as handle:
            auth.write(handle)
        mlflow += ["--app-name", "basic-auth"]
        server_env |= {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
                       "MLFLOW_AUTH_ADMIN_PASSWORD": client_env["MLFLOW_TRACKING_PASSWORD"]}
    mlflow_server = _start("mlflow", mlflow, server_env, state)

    prefect_env = {**env, "PREFECT_HOME": str(state / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "PREFECT_API_DATABASE_CONNECTION_URL": f"{PG_DRIVER['prefect']}{database}/{name}_prefect"}
    prefect = _start("prefect", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port["prefect"]),
                       "--no-ui"], prefect_env, state)
    _wait(f"{client_env['MLFLOW_TRACKING_URI']}/health", mlflow_server, state / "mlflow.log")
    _wait(f"{client_env['PREFECT_API_URL']}/health", prefect, state / "prefect.log")

    env_file = state / "env"
    env_file.touch(mode=0o600)
    env_file.write_text("".join(f"export {key}={value}\n" for key, value in client_env.items()))
    DvcProject(project).set_local_remote("stack", f"s3://{name}/dvc", client_env["AWS_ENDPOINT_URL"])
    return client_env


def down(name: str, state: Path, project: Path, drop: bool) -> None:
    """Stop the processes `up` started (their whole process groups), unset the DVC remote, maybe drop databases."""
    pids_file = state / "pids.json"
    for pid in (json.loads(pids_file.read_text()) if pids_file.exists() else {}).values():
        _stop(pid)
    pids_file.unlink(missing_ok=True)
    DvcProject(project).remove_local_remote("stack")
    if drop:
        _drop_databases([f"{name}_mlflow", f"{name}_prefect"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down", "restart"])
    # (not s3: moto keeps its objects in memory, a restart would empty the bucket)
    parser.add_argument("service", nargs="?", choices=["mlflow", "prefect"], help="restart: which one")
    parser.add_argument("--down-seconds", type=float, default=0.0, help="restart: how long the service stays down")
    parser.add_argument("--name", default="chatgraft", help="bucket name and database prefix")
    parser.add_argument("--state", type=Path, default=Path(".stack"), help="pids, logs and the env file")
    parser.add_argument("--project", type=Path, default=Path("."), help="project whose DVC remote to point at S3")
    parser.add_argument("--basic-auth", action="store_true", help="MLflow's basic-auth app (admin password in env)")
    parser.add_argument("--drop", action="store_true", help="down: drop the stack's databases too")
    parser.add_argument("--port-base", type=int, default=9310, help="S3, MLflow, Prefect on this port and the next two")
    args = parser.parse_args()
    if args.action == "up":
        up(args.name, args.state.resolve(), args.project.resolve(), args.basic_auth, args.port_base)
        print(f"stack up: source {args.state / 'env'}")
    elif args.action == "restart":
        restart(args.service, args.state.resolve(), args.down_seconds)
        print(f"{args.service} restarted")
    else:
        down(args.name, args.state.resolve(), args.project.resolve(), args.drop)
        print("stack down")


if __name__ == "__main__":
    main()
