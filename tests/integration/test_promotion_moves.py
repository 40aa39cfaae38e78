"""Moving `champion` in a real MLflow registry (sqlite) under the registry's promotion lock: a file lock beside the
sqlite store (no Prefect at all), a real Prefect concurrency limit (test server) for a registry on a server."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

from flows import promotion
from flows.cli import app
from flows.promotion_lock import (
    LOCK_ENV, SlotWaitTimeout, announce_served_store, local_store, lock_file, promotion_lock,
)
from flows.slots import GPU_TAG, PROMOTION_LIMIT, ensure_concurrency_limits, wait_for_gpu_slot
from flows.tracking import history, open_store, registry
from flows.tracking.store import Store
from pipelines.config import PromoteParams

pytestmark = pytest.mark.integration
MODEL = "chatgraft-chat"
POLICY = PromoteParams(registered_model=MODEL)  # answer_accuracy, higher is better, no margin


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Store]:
    """A project directory with default params and its embedded MLflow store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({}))
    return tmp_path, open_store(tmp_path, POLICY.experiment)


def add_version(store: Store, accuracy: float) -> str:
    """A registered version whose run scored `accuracy` (a real version; its weights do not matter here)."""
    run = store.client.create_run(store.experiment_id)
    store.client.log_metric(run.info.run_id, "answer_accuracy", accuracy)
    if not store.client.search_registered_models(f"name = '{MODEL}'"):
        store.client.create_registered_model(MODEL)
    return str(store.client.create_model_version(MODEL, run.info.artifact_uri, run.info.run_id).version)


def tags(store: Store, version: str) -> dict[str, str]:
    return registry.version_tags(store, MODEL, version)


def champion_chain(store: Store) -> list[str]:
    """From the champion back through each `promotion.previous_champion` to the first champion."""
    chain = [registry.alias_holder(store, MODEL, registry.CHAMPION)]
    while (previous := tags(store, chain[-1])["promotion.previous_champion"]) != "none":
        chain.append(previous)
    return chain


def test_two_promotions_at_once_leave_one_champion_and_a_consistent_trail(project, monkeypatch) -> None:
    _, store = project
    first, second = add_version(store, 0.8), add_version(store, 0.9)
    read_champion = registry.champion

    def slow_read(*args, **kwargs):  # widen the read-then-move window so an unserialised pair would collide
        held = read_champion(*args, **kwargs)
        time.sleep(1.0)
        return held

    monkeypatch.setattr(registry, "champion", slow_read)
    decisions = {}
    threads = [threading.Thread(target=lambda v=v: decisions.__setitem__(
        v, promotion.apply_policy(store, POLICY, v, {"answer_accuracy": acc}, actor=f"flow {v}")))
        for v, acc in ((first, 0.8), (second, 0.9))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    promoted = {v for v in (first, second) if tags(store, v)["promotion.decision"] == "promoted"}
    assert registry.alias_holder(store, MODEL, registry.CHAMPION) == second  # 0.9 wins whichever ran first
    assert set(champion_chain(store)) == promoted  # every promotion saw the champion of its moment
    assert {decisions[v].promote for v in promoted} == {True}


def test_pinned_champion_is_not_moved_by_the_policy(project) -> None:
    _, store = project
    held, better = add_version(store, 0.5), add_version(store, 0.9)
    promotion.promote_by_hand(store, MODEL, held, actor="alice", reason="known good")
    promotion.set_pinned(store, MODEL, held, True)
    decision = promotion.apply_policy(store, POLICY, better, {"answer_accuracy": 0.9}, actor="flow")
    assert not decision.promote
    assert registry.alias_holder(store, MODEL, registry.CHAMPION) == held
    assert tags(store, better)["promotion.reasons"] == f"champion version {held} is pinned: only a person moves it"


def test_cli_promote_pin_and_rollback(project) -> None:
    root, store = project
    versions = [add_version(store, acc) for acc in (0.5, 0.6, 0.7)]
    cli = CliRunner()

    def chatgraft(*args: str):
        return cli.invoke(app, [*args, "--project-dir", str(root)])

    for version in versions:
        assert chatgraft("promote", version, "--reason", "release").exit_code == 0
    assert registry.alias_holder(store, MODEL, registry.CHAMPION) == "3"
    assert tags(store, "3")["promotion.previous_champion"] == "2"
    assert tags(store, "3")["promotion.actor"].endswith("(chatgraft promote)")

    result = chatgraft("rollback")
    assert result.exit_code == 0 and "version 3 -> 2" in result.output
    assert tags(store, "2")["promotion.decision"] == "rolled back to"
    assert chatgraft("rollback").exit_code == 0  # walks further back, not back to 3
    assert registry.alias_holder(store, MODEL, registry.CHAMPION) == "1"
    refused = chatgraft("rollback")
    assert refused.exit_code == 1 and "no earlier champion" in refused.output
    assert registry.alias_holder(store, MODEL, registry.CHAMPION) == "1"

    assert chatgraft("pin", "1").exit_code == 0 and tags(store, "1")["pinned"] == "true"
    assert registry.champion(store, MODEL).pinned
    store.client.set_model_version_tag(MODEL, "1", "git_sha", "abc123")
    status = chatgraft("status")  # the registry at a glance: one row a version, newest first, then the lineage
    assert status.exit_code == 0, status.output
    rows = {line.split()[0]: line.split() for line in status.output.splitlines()[3:6]}
    assert rows["1"][1:4] == ["champion", "yes", "?"] and rows["1"][4] == "0.500"
    assert " ".join(rows["1"][5:]) == "rolled back to" and " ".join(rows["3"][5:]) == "promoted by hand"
    assert rows["3"][1:3] == ["-", "no"]
    assert "champion: version 1" in status.output and "code (git)" in status.output and "abc123" in status.output
    assert chatgraft("pin", "1", "--off").exit_code == 0 and not registry.champion(store, MODEL).pinned
    missing = chatgraft("promote", "99")
    assert missing.exit_code == 1 and "99" in missing.output

    # the version tags keep each version's latest decision; the history keeps every one, in order
    moves = [(e.decision, e.from_version, e.to_version) for e in history.read(store, MODEL)]
    assert moves == [("promoted by hand", "none", "1"), ("promoted by hand", "1", "2"), ("promoted by hand", "2", "3"),
                     ("rolled back to", "3", "2"), ("rolled back to", "2", "1")]
    shown = chatgraft("history")
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0].split()[:5] == ["when", "(UTC)", "decision", "from", "to"] and len(lines) == 6
    assert "rolled back from version 2" in lines[-1] and "(chatgraft rollback)" in lines[-1]


def promotion_slots() -> int:
    """The slots Prefect's promotion limit counts now (on the test server)."""
    ensure_concurrency_limits()
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(PROMOTION_LIMIT).active_slots


@pytest.mark.parametrize("server", [False, True], ids=["sqlite store: file lock", "tracking server: Prefect limit"])
def test_a_waiting_promotion_gives_up_saying_why(project, server: bool) -> None:
    _, store = project
    uri = "http://mlflow.example:5000" if server else store.uri
    held = threading.Event()
    done = threading.Event()
    slots_while_held = []

    def hold() -> None:
        with promotion_lock(uri, 10, logging.getLogger("holder")):
            slots_while_held.append(promotion_slots())
            held.set()
            done.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(60)
        with pytest.raises(SlotWaitTimeout, match="promotion lock after 2 s .*another promotion"):
            with promotion_lock(uri, 1.5, logging.getLogger("waiter"), poll_seconds=0.5):
                pass
    finally:
        done.set()
        holder.join()
    with promotion_lock(uri, 5, logging.getLogger("after")):  # given back by its holder
        pass
    # the lock follows where the registry lives: the Prefect server's limit for a server, a file beside sqlite's db
    assert slots_while_held == [1 if server else 0]
    assert (lock_file(uri) is None) == server
    assert server or lock_file(uri) == Path(store.uri.removeprefix("sqlite:///") + ".promotion.lock")


def test_only_a_store_of_this_machine_is_locked_with_a_file(tmp_path: Path) -> None:
    assert local_store(f"sqlite:///{tmp_path}/mlflow.db") == tmp_path / "mlflow.db"
    assert local_store(tmp_path.as_uri()) == tmp_path and local_store(str(tmp_path)) == tmp_path
    assert local_store("sqlite:///mlflow/mlflow.db") == Path("mlflow/mlflow.db").resolve()
    for elsewhere in ("http://mlflow:5000", "https://mlflow.example", "postgresql://u:p@db:5432/mlflow",
                      "mysql+pymysql://db/mlflow", "databricks", "sqlite:///:memory:", "sqlite://"):
        assert local_store(elsewhere) is None, elsewhere


# A person's move in a process of its own, on a project's embedded store: with the read-then-move window widened
# (set_alias waits a second first) so that two unserialised moves would both start from the same champion. Prints
# what it did and the Prefect modules it imported.
MOVE = """
import json, sys, time
from flows import promotion
from flows.context import open_registry
from flows.tracking import registry
from pathlib import Path

set_alias = registry.set_alias
registry.set_alias = lambda *args: (time.sleep(1.0), set_alias(*args))
params, store = open_registry(Path(sys.argv[1]))
if sys.argv[2] == "flow":
    moved = promotion.apply_policy(store, params.promote, sys.argv[3], {"answer_accuracy": 0.9}, actor="flow").promote
else:
    moved = promotion.promote_by_hand(store, params.promote.registered_model, sys.argv[3], "alice", "release")
print(json.dumps({"moved": str(moved), "prefect": sorted(m for m in sys.modules if m.split(".")[0] == "prefect")}))
"""


def no_prefect_server(tmp_path: Path) -> dict[str, str]:
    """The environment of a process on the embedded default: no Prefect server named, a Prefect home of its own."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_API", "MLFLOW_TRACKING"))}
    return env | {"PREFECT_HOME": str(tmp_path / "prefect-home")}


def test_two_processes_moving_at_once_on_a_sqlite_store_are_serialised_without_prefect(project, tmp_path) -> None:
    root, store = project
    by_hand, by_flow = add_version(store, 0.5), add_version(store, 0.9)
    env = no_prefect_server(tmp_path)
    moves = [subprocess.Popen([sys.executable, "-c", MOVE, str(root), kind, version], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for kind, version in (("hand", by_hand), ("flow", by_flow))]
    results = [move.communicate(timeout=300) for move in moves]
    for move, (out, err) in zip(moves, results):
        assert move.returncode == 0, out + err
        assert json.loads(out.splitlines()[-1])["prefect"] == [], "a move on a local store imported Prefect"
    assert not (tmp_path / "prefect-home").exists()  # no Prefect database, so no temporary server either

    trail = [(e.from_version, e.to_version) for e in history.read(store, MODEL)]
    assert len(trail) == 2, trail  # both moves recorded (the flow's policy beats 0.5 whichever came first)
    assert trail[1][0] == trail[0][1], trail  # the second started where the first ended: never both from "none"
    assert registry.alias_holder(store, MODEL, registry.CHAMPION) == trail[1][1]


def test_chatgraft_promote_on_the_embedded_store_imports_no_prefect_and_prints_one_line(project, tmp_path) -> None:
    root, store = project
    version = add_version(store, 0.5)
    check = ("import atexit, json, sys\nfrom flows.cli import app\n"
             "atexit.register(lambda: print(json.dumps([m for m in sys.modules if m.split('.')[0] == 'prefect'])))\n"
             "app()")
    done = subprocess.run([sys.executable, "-c", check, "promote", version, "--project-dir", str(root)],
                          env=no_prefect_server(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [f"{MODEL} champion: version none -> {version}", "[]"]
    assert done.stderr == ""  # no line of Prefect's at exit
    assert registry.alias_holder(store, MODEL, registry.CHAMPION) == version


def test_a_gpu_wait_names_the_holding_task_run_and_flow_run(project, caplog) -> None:
    ensure_concurrency_limits(gpu_slots=1)
    running, release = threading.Event(), threading.Event()

    @task(name="stage", task_run_name="cp", tags=[GPU_TAG])
    def busy() -> None:
        running.set()
        release.wait(60)

    @flow(flow_run_name="gpu-holder")
    def holding() -> None:
        busy()

    thread = threading.Thread(target=holding)
    thread.start()
    try:
        assert running.wait(60)
        caplog.set_level(logging.INFO)
        with pytest.raises(SlotWaitTimeout, match=r"gpu slot for merge@1.0 after 2 s .*task run cp of flow run "
                                                  r"gpu-holder since 20"):
            wait_for_gpu_slot("merge@1.0", 1.5, logging.getLogger("waiter"), poll_seconds=0.5)
        assert "waiting for a gpu slot for merge@1.0: held by task run cp" in caplog.text
    finally:
        release.set()
        thread.join()
    wait_for_gpu_slot("merge@1.0", 5, logging.getLogger("waiter"))  # free again: returns at once


def test_a_command_given_a_running_uis_address_takes_the_lock_of_the_store_it_serves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`chatgraft ui` serves a local store over http; its watcher takes that store's file lock, and so must a person's
    command or a flow given the UI's address, or their moves and the watcher's race (found as a sqlite UNIQUE error
    on a version's tag). Once the UI has stopped (its process gone), the address is a server's like any other."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(LOCK_ENV, raising=False)
    url, lock = "http://127.0.0.1:5999", tmp_path / "mlflow.db.promotion.lock"
    assert lock_file(url) is None  # no UI: a tracking server, Prefect's limit
    record = announce_served_store(url, lock)
    assert lock_file(url) == lock and lock_file(url + "/") == lock
    assert lock_file("http://127.0.0.1:5998") is None  # another address
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    record.write_text(json.dumps({**json.loads(record.read_text()), "pid": dead.pid}))
    assert lock_file(url) is None  # the UI that said so is gone
