"""Keeps the embedded MLflow store's artifact locations inside the project, wherever the project lies now.

MLflow records every artifact location as an absolute path or `file://` URI and has no relative ones (its issue
#3144); `mlflow-artifacts:` URIs would need a tracking server, too slow to start for every command. So the store
records the project root it was last opened at (table `chatgraft_store_root` of mlflow.db), and opening it at
another root (the project was moved, or this is a copy) rewrites every location under the old root to the same
place under the new one, in one sqlite transaction, and the checkpoint folder each logged model's MLmodel names. Experiments MLflow placed at its default, `<working
directory>/mlruns/<id>` (the Default experiment, and the promotion history before it was given a location), are
brought into mlflow/artifacts the same way, their runs' folders copied there when they exist.

What a person must not do:
- share one mlflow.db between two projects (a symlink, or MLFLOW_TRACKING_URI naming another project's db): each
  open would take the other's locations for its own;
- move or copy a project while a command or the flow has its store open: what it logs afterwards goes to the old
  folder;
- open a moved or copied project with MLflow alone (`mlflow ui`, `mlflow models serve`, a script setting the
  tracking URI), or with `chatgraft ui` (which starts MLflow's server on the db as it is), before another chatgraft
  command (`chatgraft status`, `history`, `run`) opened it once: until then its locations name the old folder,
  which a copy's runs would write into.
Locations outside the old root (an experiment a person pointed elsewhere) are left as they are.
"""
from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import yaml

from pipelines.atomic import write_text_atomic

LOCK_WAIT_S = 60.0
# every column of MLflow 3's sqlite schema that holds an artifact location, with the rows that hold one
LOCATIONS = (
    ("experiments", "artifact_location", ""),
    ("runs", "artifact_uri", ""),
    ("logged_models", "artifact_location", ""),
    ("model_versions", "source", ""),
    ("model_versions", "storage_location", ""),
    ("trace_tags", "value", " AND key = 'mlflow.artifactLocation'"),
    ("workspaces", "default_artifact_root", ""),
)
ROOT_TABLE = "chatgraft_store_root"
SOURCE_KEY = "source_model_name"  # the transformers flavor's record of the folder a model was logged from


def store_db(root: Path) -> Path:
    """The embedded store's database file."""
    return root / "mlflow" / "mlflow.db"


def store_artifacts(root: Path) -> Path:
    """Where the embedded store keeps every experiment's artifacts."""
    return root / "mlflow" / "artifacts"


def relocate(root: Path) -> None:
    """Point the embedded store's artifact locations at `root` when it was last opened elsewhere, or holds
    experiments at MLflow's default location. The check reads only; the rewrite holds sqlite's write lock on the db
    file, so a second process opening the moved project waits, then finds nothing left to do. A project with no
    store yet has nothing to move."""
    root = root.resolve()
    if not store_db(root).is_file():
        return
    with closing(sqlite3.connect(store_db(root), timeout=LOCK_WAIT_S, isolation_level=None)) as db:
        if not _pending(db, root):
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            if _pending(db, root):
                _rewrite_all(db, root)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


def _pending(db: sqlite3.Connection, root: Path) -> bool:
    return _recorded_root(db) != str(root) or bool(_default_located(db))


def _rewrite_all(db: sqlite3.Connection, root: Path) -> None:
    for old in _previous_roots(db, root):
        _rewrite(db, old.as_uri(), root.as_uri())
        _rewrite(db, str(old), str(root))  # MLflow's default locations are plain paths
        _rewrite_model_sources(store_artifacts(root), str(old), str(root))
    for location in _default_located(db):
        _copy_folders(db, Path(location), store_artifacts(root))
        _rewrite(db, location, store_artifacts(root).as_uri())
    db.execute(f"CREATE TABLE IF NOT EXISTS {ROOT_TABLE} (root TEXT NOT NULL)")
    db.execute(f"DELETE FROM {ROOT_TABLE}")
    db.execute(f"INSERT INTO {ROOT_TABLE} VALUES (?)", (str(root),))


def _rewrite_model_sources(artifacts: Path, old: str, new: str) -> None:
    """Point each logged model's `source_model_name` (the checkpoint folder it was logged from) under `old` at the
    same folder under `new`: MLflow's served model reads that folder's tokenizer for a request's `stop` and names it
    as the answer's `model`. Idempotent, so a rewrite of the rows rolled back and done again finds nothing here."""
    for mlmodel in artifacts.rglob("MLmodel"):
        spec = yaml.safe_load(mlmodel.read_text())
        flavor = (spec.get("flavors") or {}).get("transformers") or {}
        source = flavor.get(SOURCE_KEY)
        if isinstance(source, str) and (source == old or source.startswith(old + "/")):
            flavor[SOURCE_KEY] = new + source[len(old):]
            write_text_atomic(mlmodel, yaml.safe_dump(spec, default_flow_style=False, sort_keys=False))


def _recorded_root(db: sqlite3.Connection) -> str | None:
    if not _has_table(db, ROOT_TABLE):
        return None
    found = db.execute(f"SELECT root FROM {ROOT_TABLE}").fetchone()
    return found[0] if found else None


def _previous_roots(db: sqlite3.Connection, root: Path) -> list[Path]:
    """The root the store was last opened at; for a store from before it was recorded, the roots its project
    experiments' `file://<root>/mlflow/artifacts` locations name."""
    recorded = _recorded_root(db)
    if recorded is not None:
        return [Path(recorded)] if recorded != str(root) else []
    named = db.execute("SELECT DISTINCT artifact_location FROM experiments "
                       "WHERE artifact_location LIKE 'file:%/mlflow/artifacts'").fetchall()
    return [old for old in {Path(url2pathname(urlparse(uri).path)).parent.parent for (uri,) in named} if old != root]


def _default_located(db: sqlite3.Connection) -> list[str]:
    """Locations of experiments created without one: MLflow put them at `<working directory>/mlruns/<id>`."""
    rows = db.execute("SELECT experiment_id, artifact_location FROM experiments "
                      "WHERE artifact_location LIKE '%/mlruns/%'").fetchall()
    return [location for experiment_id, location in rows if location.endswith(f"/mlruns/{experiment_id}")
            and not urlparse(location).scheme]


def _copy_folders(db: sqlite3.Connection, location: Path, artifacts: Path) -> None:
    """Copy the folders this store's rows name under `location` (each once: a version's folder inside its run's
    goes with the run's) into `artifacts`. Copied, not moved: a copy of this project's store names the same
    folders, and so may another project's store opened from the same working directory."""
    named = _values_under(db, str(location))
    for value in named:
        if Path(value).is_dir() and not any(value.startswith(other + "/") for other in named):
            shutil.copytree(value, artifacts / Path(value).relative_to(location), dirs_exist_ok=True)


def _values_under(db: sqlite3.Connection, prefix: str) -> set[str]:
    found: set[str] = set()
    for table, column, only in _present(db):
        found |= {value for (value,) in db.execute(
            f"SELECT {column} FROM {table} WHERE substr({column}, 1, ?) = ?{only}", (len(prefix) + 1, prefix + "/"))}
    return found


def _rewrite(db: sqlite3.Connection, old: str, new: str) -> None:
    """Replace the prefix `old` by `new` in every location that is `old` or lies under it."""
    for table, column, only in _present(db):
        db.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                   f"WHERE ({column} = ? OR substr({column}, 1, ?) = ?){only}",
                   (new, len(old) + 1, old, len(old) + 1, old + "/"))


def _present(db: sqlite3.Connection) -> list[tuple[str, str, str]]:
    return [location for location in LOCATIONS if _has_table(db, location[0])]


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None
