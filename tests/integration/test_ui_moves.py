"""Champion moved in the MLflow UI: `chatgraft ui` (the MLflow UI on the embedded sqlite store, and `chatgraft watch`
beside it) hears MLflow's signed webhooks, records each move in the promotion history, undoes a move the policy
forbids, and refuses deliveries it cannot trust. Moves are made in Chromium with the UI's alias editor, and (for
the races) through the UI server's REST API, the calls that editor makes; the versions' pages, read in Chromium, say
where each stands after a move."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests
import yaml
from filelock import FileLock
from mlflow import MlflowClient
from playwright.sync_api import sync_playwright
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter
from prefect.settings import PREFECT_API_URL
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

from flows import promotion
from flows.cli import app
from flows.tracking import history, open_store, registry
from flows.tracking.store import Store
from flows.tracking.webhooks import project_keys
from flows.promotion_lock import lock_file
from flows.watch import PATH
from tests.conftest import answers_health, free_port, wait_until

pytestmark = pytest.mark.integration
MODEL = "chatgraft-chat"
CHROMIUM = shutil.which("chromium") or "chromium (Debian's package: `make browser` installs it)"
GOOD = {"answer_accuracy": 0.7, "termination_rate": 1.0, "repetition_rate": 0.0, "false_refusal_rate": 0.0}


class UiProject:
    """A project, its `chatgraft ui` process, and a client of the UI's server."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.port, self.watch_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flows", "ui", "--project-dir", str(self.root), "--port", str(self.port),
             "--watch-port", str(self.watch_port)], env=self.env, stdout=subprocess.DEVNULL,
            stderr=(self.root / "ui.log").open("a"))
        wait_until(lambda: answers_health(f"http://127.0.0.1:{self.watch_port}"), "chatgraft ui and its receiver",
                   seconds=180)

    def stop(self) -> list[psutil.Process]:
        """SIGTERM to `chatgraft ui` alone; returns what it had started."""
        started = psutil.Process(self.process.pid).children(recursive=True)
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        return started

    @property
    def local_store(self) -> Store:
        """The project's embedded store, as a person's `chatgraft promote` on this machine opens it."""
        return open_store(self.root, "chatgraft")

    @property
    def store(self) -> Store:
        os.environ["MLFLOW_TRACKING_URI"] = self.url
        try:
            return open_store(self.root, "chatgraft")
        finally:
            del os.environ["MLFLOW_TRACKING_URI"]

    def deliver(self, body: bytes, secret: str | None = None) -> requests.Response:
        """POST a delivery to the receiver, signed as MLflow signs when `secret` is given."""
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            delivery, stamp = str(uuid.uuid4()), str(int(time.time()))
            digest = hmac.new(secret.encode(), f"{delivery}.{stamp}.".encode() + body, hashlib.sha256).digest()
            headers |= {"X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": stamp,
                        "X-MLflow-Signature": f"v1,{base64.b64encode(digest).decode()}"}
        return requests.post(f"http://127.0.0.1:{self.watch_port}{PATH}", data=body, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def ui_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiProject]:
    root = tmp_path_factory.mktemp("ui-moves")
    policy = {"guardrails": {"termination_rate": {"min": 0.9}}}  # promote.ui_moves: guard, the default
    (root / "params.yaml").write_text(yaml.safe_dump({"promote": policy}))
    with prefect_test_harness(server_startup_timeout=120):
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        project = UiProject(root, env | {"PREFECT_API_URL": PREFECT_API_URL.value()})
        project.start()
        try:
            yield project
        finally:
            if project.process.poll() is None:
                project.stop()


def add_version(store: Store, metrics: dict[str, float]) -> str:
    run = store.client.create_run(store.experiment_id)
    for name, value in metrics.items():
        store.client.log_metric(run.info.run_id, name, value)
    if not store.client.search_registered_models(f"name = '{MODEL}'"):
        store.client.create_registered_model(MODEL)
    return str(store.client.create_model_version(MODEL, run.info.artifact_uri, run.info.run_id).version)


def move_in_ui(client: MlflowClient, version: str) -> None:
    client.set_registered_model_alias(MODEL, registry.CHAMPION, version)  # POST .../registered-models/alias


def entries(store: Store) -> list[tuple[str, str, str, str]]:
    return [(e.decision, e.from_version, e.to_version, e.actor) for e in history.read(store, MODEL)]


def settle(store: Store, count: int) -> list[tuple[str, str, str, str]]:
    """The history once it holds `count` entries and nothing more arrives for a second."""
    wait_until(lambda: len(history.read(store, MODEL)) >= count, f"{count} history entries (have {entries(store)})",
               seconds=60, interval=0.3)
    time.sleep(1.0)
    return entries(store)


def test_ui_moves_are_recorded_guarded_and_listed(ui_project: UiProject) -> None:
    store = ui_project.store
    good, other, failing = add_version(store, GOOD), add_version(store, GOOD), add_version(
        store, GOOD | {"termination_rate": 0.5})

    # the receiver takes the lock a person's command on this machine takes: the file beside the embedded store
    with FileLock(lock_file(ui_project.local_store.uri)):
        move_in_ui(store.client, good)
        time.sleep(3)
        assert history.read(store, MODEL) == []  # heard, waiting for the lock
    assert settle(store, 1) == [(history.UI_MOVE, "none", good, promotion.UI_ACTOR)]

    move_in_ui(store.client, failing)  # breaks termination_rate >= 0.9: undone within seconds
    assert settle(store, 3)[1:] == [(history.UI_MOVE, good, failing, promotion.UI_ACTOR),
                                    (history.REVERTED, failing, good, promotion.GUARD_ACTOR)]
    assert registry.alias_holder(store, MODEL, registry.CHAMPION) == good
    failing_tags = registry.version_tags(store, MODEL, failing)
    assert failing_tags["promotion.decision"] == history.REVERTED
    assert "termination_rate 0.5 < min 0.9" in failing_tags["promotion.reasons"]

    promotion.set_pinned(store, MODEL, good, True)  # a pinned champion stays until a person unpins it
    move_in_ui(store.client, other)
    assert settle(store, 5)[3:] == [(history.UI_MOVE, good, other, promotion.UI_ACTOR),
                                    (history.REVERTED, other, good, promotion.GUARD_ACTOR)]
    assert "pinned" in registry.version_tags(store, MODEL, other)["promotion.reasons"]
    promotion.set_pinned(store, MODEL, good, False)

    listed = CliRunner().invoke(app, ["history", "--project-dir", str(ui_project.root)],
                                env={"MLFLOW_TRACKING_URI": ui_project.url})
    assert listed.exit_code == 0, listed.output
    rows = listed.output.splitlines()[1:]
    assert [history.UI_MOVE in row for row in rows] == [True, True, False, True, False]
    assert [history.REVERTED in row for row in rows] == [False, False, True, False, True]
    assert "termination_rate 0.5 < min 0.9" in rows[2]

    def announced() -> set[tuple[str, str, str]]:  # each move is a Prefect event on the (real, test) server
        with get_client(sync_client=True) as client:
            page = client.read_events(EventFilter(event=EventNameFilter(name=[history.MOVED_EVENT])), limit=50)
        return {(e.payload["from_version"], e.payload["to_version"], e.payload["actor"]) for e in page.events
                if e.resource.id == f"mlflow.registered-model.{MODEL}"}
    expected = {(good, failing, promotion.UI_ACTOR), (failing, good, promotion.GUARD_ACTOR)}
    wait_until(lambda: expected <= announced(), "chatgraft.champion.moved events", seconds=60)

    # two people's UI moves and a third's promotion at the same time (the UI moves a click apart: moves within the
    # same milliseconds may be delivered out of order and are then recorded as the later one alone): one champion,
    # three entries, each from where the one before ended
    before = len(history.read(store, MODEL))
    third = add_version(store, GOOD)
    moves = [threading.Thread(target=promotion.promote_by_hand, args=(ui_project.local_store, MODEL, good, "alice",
                                                                      "release"))]
    moves += [threading.Thread(target=lambda v=v, delay=delay: (time.sleep(delay), move_in_ui(
        MlflowClient(ui_project.url, ui_project.url), v))) for v, delay in ((other, 0.0), (third, 0.2))]
    for thread in moves:
        thread.start()
    for thread in moves:
        thread.join()
    trail = settle(store, before + 3)
    assert len(trail) == before + 3, "\n".join(map(str, trail))
    for earlier, later in zip(trail[before - 1:], trail[before:]):
        assert later[1] == earlier[2], trail  # every move starts where the one before ended
    assert trail[-1][2] == registry.alias_holder(store, MODEL, registry.CHAMPION)


def move_in_browser(url: str, version: str, screenshot: Path) -> None:
    """Set `champion` on `version` with the MLflow UI's own alias editor, in Debian's Chromium."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{url}/#/models/{MODEL}/versions/{version}")
            page.get_by_role("button", name="Add").first.click()  # Aliases: Add
            dialog = page.get_by_role("dialog")
            dialog.get_by_role("combobox").fill(registry.CHAMPION)
            dialog.get_by_role("combobox").press("Enter")
            dialog.get_by_role("button", name="Save aliases").click()
            dialog.wait_for(state="hidden")
            page.wait_for_timeout(3000)  # the receiver answers within a second or two
            page.reload()
            page.get_by_text("promotion.decision").wait_for()
            page.screenshot(path=screenshot)
        finally:
            browser.close()


def test_a_move_in_the_browser_is_heard_and_a_failing_one_reverted(ui_project: UiProject, tmp_path: Path) -> None:
    store = ui_project.store
    good, failing = add_version(store, GOOD), add_version(store, GOOD | {"termination_rate": 0.5})
    before = len(history.read(store, MODEL))
    move_in_browser(ui_project.url, good, tmp_path / "good.png")
    move_in_browser(ui_project.url, failing, tmp_path / "failing.png")
    trail = settle(store, before + 3)
    assert trail[before:] == [(history.UI_MOVE, trail[before - 1][2], good, promotion.UI_ACTOR),
                              (history.UI_MOVE, good, failing, promotion.UI_ACTOR),
                              (history.REVERTED, failing, good, promotion.GUARD_ACTOR)]
    assert registry.alias_holder(store, MODEL, registry.CHAMPION) == good
    assert "termination_rate 0.5 < min 0.9" in registry.version_tags(store, MODEL, failing)["promotion.reasons"]
    listed = CliRunner().invoke(app, ["history", "--project-dir", str(ui_project.root)],
                                env={"MLFLOW_TRACKING_URI": ui_project.url}).output.splitlines()
    assert [row.split()[-1] for row in listed[-3:]] == ["UI", "UI", "0.9"]  # actor, actor, the reason's bound


def read_pages(url: str, versions: list[str], screenshots: Path) -> dict[str, str]:
    """The text each version's page shows in Debian's Chromium, once its description has its status."""
    texts = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            for version in versions:
                page.goto(f"{url}/#/models/{MODEL}/versions/{version}")
                page.get_by_text("Status:").first.wait_for()
                page.screenshot(path=screenshots / f"version-{version}.png")
                texts[version] = page.inner_text("body")
        finally:
            browser.close()
    return texts


def test_a_promoted_versions_page_calls_it_champion_and_the_old_ones_not(ui_project: UiProject,
                                                                           tmp_path: Path) -> None:
    store = ui_project.store
    old, new = add_version(store, GOOD), add_version(store, GOOD)
    note = "Alice: answers dates well; check names before release."
    store.client.update_model_version(MODEL, new, description=note)  # a person's, kept by every rewrite
    for version in (old, new):
        promoted = CliRunner().invoke(app, ["promote", version, "--reason", "release", "--project-dir",
                                            str(ui_project.root)], env={"MLFLOW_TRACKING_URI": ui_project.url})
        assert promoted.exit_code == 0, promoted.output
    pages = read_pages(ui_project.url, [new, old], tmp_path)
    assert "Status: champion since" in pages[new] and note in pages[new]
    assert "chatgraft:status" not in pages[new]  # the markers are HTML comments: the UI hides them
    assert "Status: was champion" in pages[old] and "Status: champion" not in pages[old]
    assert f"champion (version {new})" in pages[old] and f"chatgraft promote {old}" in pages[old]


def test_deliveries_it_cannot_trust_get_a_4xx_and_change_nothing(ui_project: UiProject) -> None:
    store = ui_project.store
    before, holder = entries(store), registry.alias_holder(store, MODEL, registry.CHAMPION)
    secret = project_keys(ui_project.root).secret
    move = json.dumps({"entity": "model_version_alias", "action": "created", "timestamp": "2026-11-30T00:00:00",
                       "data": {"name": MODEL, "alias": "champion", "version": "1"}}).encode()
    assert ui_project.deliver(move).status_code == 401  # unsigned
    assert ui_project.deliver(move, secret="not the project's").status_code == 401
    stranger = move.replace(MODEL.encode(), b"someone-elses-model")
    assert ui_project.deliver(stranger, secret).status_code == 404
    assert ui_project.deliver(b"{not json", secret).status_code == 400
    assert ui_project.deliver(b'{"entity": "model_version_alias"}', secret).status_code == 422
    assert entries(store) == before
    assert registry.alias_holder(store, MODEL, registry.CHAMPION) == holder


def test_sigterm_stops_everything_it_started_and_a_restart_reconciles_a_missed_move(ui_project: UiProject) -> None:
    started = ui_project.stop()
    assert started, "chatgraft ui started no processes"
    wait_until(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in started),
               "the UI's processes to stop", seconds=30, interval=0.5)

    embedded = open_store(ui_project.root, "chatgraft")  # no server: nothing hears this move
    target = add_version(embedded, GOOD)
    move_in_ui(embedded.client, target)
    before = len(history.read(embedded, MODEL))
    ui_project.start()
    trail = settle(embedded, before + 1)
    assert trail[-1][2] == target and trail[-1][1] == trail[-2][2]
