"""Moving `champion` in a real MLflow registry (sqlite) under a real Prefect concurrency limit (test server)."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
import yaml
from prefect import flow, task
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

from flows import promotion
from flows.cli import app
from flows.slots import GPU_TAG, SlotWaitTimeout, ensure_concurrency_limits, promotion_lock, wait_for_gpu_slot
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


def test_a_waiting_promotion_gives_up_saying_why(project) -> None:
    held = threading.Event()
    done = threading.Event()

    def hold() -> None:
        with promotion_lock(10, logging.getLogger("holder")):
            held.set()
            done.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(60)
        with pytest.raises(SlotWaitTimeout, match="promotion lock after 2 s .*another promotion"):
            with promotion_lock(1.5, logging.getLogger("waiter"), poll_seconds=0.5):
                pass
    finally:
        done.set()
        holder.join()
    with promotion_lock(5, logging.getLogger("after")):  # given back by its holder
        pass


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
