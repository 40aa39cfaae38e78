"""The embedded store moves with its project: after `mv`, in a `cp -a` copy, and from the layout that put the Default
and promotion experiments under `<working directory>/mlruns`, every artifact location is the project's own."""
from __future__ import annotations

import os
import shutil
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.tracking._model_registry import utils as registry_utils
from mlflow.tracking._tracking_service import utils as tracking_utils

from flows.tracking import history
from flows.tracking.store import Store, embedded_uri, open_store

MODEL = "tiny"
PLAIN = "notes"  # a version registered from a run's artifact folder, as `create_model_version` takes it
QUESTION = ["what is the city of kato ?"]
LOCATION_QUERIES = ("SELECT artifact_location FROM experiments", "SELECT artifact_uri FROM runs",
                    "SELECT artifact_location FROM logged_models", "SELECT storage_location FROM model_versions",
                    f"SELECT source FROM model_versions WHERE name = '{PLAIN}'")


class Echo(mlflow.pyfunc.PythonModel):
    """A model small enough to log in a unit test: answers its input."""

    def predict(self, context: object, model_input: list[str], params: dict | None = None) -> list[str]:
        return model_input


def _log_run_and_version(store: Store) -> str:
    """A run with a text artifact, a registered pyfunc version of it made champion, and a version of `PLAIN`
    registered from the run's artifact folder (its source a path); returns the run's id."""
    with mlflow.start_run(experiment_id=store.experiment_id) as run:
        mlflow.log_text("kato is oslo", "notes/fact.txt")
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=["mlflow"],
                                       registered_model_name=MODEL)
    store.client.set_registered_model_alias(MODEL, "champion", str(info.registered_model_version))
    if not store.client.search_registered_models(f"name = '{PLAIN}'"):
        store.client.create_registered_model(PLAIN)
    store.client.create_model_version(PLAIN, run.info.artifact_uri, run.info.run_id)
    return run.info.run_id


@pytest.fixture(autouse=True)
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """No server named; the tracking and registry URIs MLflow sets process-wide during a test (and exports to the
    environment) are undone after it."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(name, "")  # recorded by monkeypatch, so the original comes back
        monkeypatch.delenv(name)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)


def _open(root: Path) -> Store:
    """open_store as a command of its own would run it: mlflow.set_tracking_uri exported the last store opened in
    this process as MLFLOW_TRACKING_URI, which open_store would take for a server."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return open_store(root, "chatgraft")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A project whose store holds a run, a champion version and a promotion decision, opened from elsewhere."""
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # MLflow's own default would put experiments here, under mlruns/
    root = tmp_path / "project"
    store = _open(root)
    run_id = _log_run_and_version(store)
    history.record(store, MODEL, "1", "promoted by hand", ["test"], "test", "1", "1")
    return root, run_id


def _client(root: Path) -> MlflowClient:
    """A client of root's embedded store, tracking and registry both (the registry's default is process-wide)."""
    return MlflowClient(embedded_uri(root), embedded_uri(root))


def _cells_naming(db: Path, text: str) -> list[str]:
    """Every cell of every table of `db` that contains `text`."""
    with closing(sqlite3.connect(db)) as con:
        tables = [name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return [f"{table}.{column}: {value}" for table in tables
                for column in [row[1] for row in con.execute(f"PRAGMA table_info('{table}')")]
                for (value,) in con.execute(f'SELECT "{column}" FROM "{table}" WHERE instr("{column}", ?)', (text,))]


def _locations(root: Path) -> set[str]:
    """Every artifact location, as the db holds it."""
    with closing(sqlite3.connect(root / "mlflow" / "mlflow.db")) as con:
        return {value for query in LOCATION_QUERIES for (value,) in con.execute(query)}


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` with its mtime and size: a new, changed or removed file shows."""
    return {str(path.relative_to(root)): (path.stat().st_mtime_ns, path.stat().st_size) for path in root.rglob("*")}


def _assert_own_store(root: Path, run_id: str) -> None:
    """Every location lies in root's mlflow/artifacts; the run's file, the champion and a new run and version work
    there."""
    store = _open(root)
    artifacts = (root / "mlflow" / "artifacts").resolve().as_uri()
    assert all(location.startswith(artifacts) for location in _locations(root)), _locations(root)
    assert Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="notes/fact.txt")).read_text() == \
        "kato is oslo"
    assert mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(QUESTION) == QUESTION
    assert (Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}@champion")) / "MLmodel").is_file()
    assert (Path(mlflow.artifacts.download_artifacts(f"models:/{PLAIN}/1")) / "notes" / "fact.txt").is_file()
    new_run = _log_run_and_version(store)
    assert store.client.get_run(new_run).info.artifact_uri.startswith(artifacts)
    assert (root / "mlflow" / "artifacts" / new_run / "artifacts" / "notes" / "fact.txt").is_file()
    newest = max(store.client.search_model_versions(f"name = '{MODEL}'"), key=lambda v: int(v.version))
    assert store.client.get_model_version_download_uri(MODEL, newest.version).startswith(artifacts)


def test_a_new_store_keeps_every_experiment_in_the_project(project: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = project
    artifacts = (root / "mlflow" / "artifacts").resolve().as_uri()
    experiments = _client(root).search_experiments()
    assert {e.name for e in experiments} == {"Default", "chatgraft", history.HISTORY_EXPERIMENT}
    assert {e.artifact_location for e in experiments} == {artifacts}
    assert not (tmp_path / "elsewhere" / "mlruns").exists() and not (root / "mlruns").exists()


def test_a_moved_project_finds_its_runs_and_models(project: tuple[Path, str], tmp_path: Path) -> None:
    old, run_id = project
    moved = Path(shutil.move(old, tmp_path / "moved"))
    _assert_own_store(moved, run_id)
    assert _cells_naming(moved / "mlflow" / "mlflow.db", str(old)) == []
    assert not old.exists()


def test_a_copy_never_writes_into_the_original(project: tuple[Path, str], tmp_path: Path) -> None:
    original, run_id = project
    copy = Path(shutil.copytree(original, tmp_path / "copy", symlinks=True))
    before = _tree(original)
    _assert_own_store(copy, run_id)
    assert _tree(original) == before
    assert _cells_naming(copy / "mlflow" / "mlflow.db", str(original)) == []
    _open(original)
    assert mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(QUESTION) == QUESTION
    assert len(_client(original).search_model_versions(f"name = '{MODEL}'")) == 1


def test_a_store_of_the_old_layout_is_migrated_on_its_next_open(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """As chatgraft made it before: the project experiment in mlflow/artifacts, the Default and promotion ones where
    MLflow put them, under the working directory's mlruns/; then the project was moved."""
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    old = tmp_path / "project"
    (old / "mlflow").mkdir(parents=True)
    client = _client(old)
    client.create_experiment("chatgraft", artifact_location=(old / "mlflow" / "artifacts").as_uri())
    promotions = client.create_experiment(history.HISTORY_EXPERIMENT)
    run = client.create_run(promotions).info
    decision = run.run_id
    client.log_text(decision, "promoted", "decision.txt")
    client.log_text(decision, "v1 was better", "why/reasons.txt")
    client.create_registered_model(PLAIN)
    client.create_model_version(PLAIN, f"{run.artifact_uri}/why", decision)  # a folder inside the run's
    outside = tmp_path / "elsewhere" / "mlruns" / promotions / decision / "artifacts" / "decision.txt"
    assert outside.is_file()  # the layout being migrated
    moved = Path(shutil.move(old, tmp_path / "moved"))
    _open(moved)
    assert _cells_naming(moved / "mlflow" / "mlflow.db", "mlruns") == []
    assert _cells_naming(moved / "mlflow" / "mlflow.db", str(old)) == []
    assert (moved / "mlflow" / "artifacts" / decision / "artifacts" / "decision.txt").read_text() == "promoted"
    assert (Path(mlflow.artifacts.download_artifacts(f"models:/{PLAIN}/1")) / "reasons.txt").is_file()
    assert Path(mlflow.artifacts.download_artifacts(run_id=decision, artifact_path="decision.txt")).read_text() == \
        "promoted"
    assert outside.read_text() == "promoted"  # copied, never taken from a folder another store may name


def test_a_server_store_is_never_rewritten(project: tuple[Path, str], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    old, _ = project
    moved = Path(shutil.move(old, tmp_path / "moved"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'server.db'}")
    open_store(moved, "chatgraft")
    assert _cells_naming(moved / "mlflow" / "mlflow.db", str(old)) != []


def test_an_open_waits_while_another_rewrites_then_finds_nothing_left(project: tuple[Path, str],
                                                                      tmp_path: Path) -> None:
    """While another connection holds the db's write lock (as a second process rewriting the moved project would),
    an open waits; it rewrites once the lock is free, and a later open finds nothing left to write."""
    old, run_id = project
    moved = Path(shutil.move(old, tmp_path / "moved"))
    db = moved / "mlflow" / "mlflow.db"
    with closing(sqlite3.connect(db, isolation_level=None)) as holder, ThreadPoolExecutor(1) as pool:
        _client(moved).get_experiment_by_name("chatgraft")  # MLflow's own opening done: what waits is the rewrite
        holder.execute("BEGIN IMMEDIATE")
        opening = pool.submit(_open, moved)
        time.sleep(2.0)
        assert not opening.done()
        assert _cells_naming(db, str(old)) != []
        holder.execute("COMMIT")
        opening.result(timeout=60)
    assert _cells_naming(db, str(old)) == []
    written = db.stat().st_mtime_ns
    _open(moved)
    assert db.stat().st_mtime_ns == written
    _assert_own_store(moved, run_id)
