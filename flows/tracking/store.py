"""Where runs and models are kept: the server named by MLFLOW_TRACKING_URI, else the embedded sqlite store."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from flows.tracking.relocation import relocate, store_artifacts, store_db


@dataclass(frozen=True)
class Store:
    """An MLflow tracking + registry store, the experiment the flow logs to, and where experiments the project
    creates keep their artifacts (None: the server's default)."""

    uri: str
    client: MlflowClient
    experiment_id: str
    artifact_location: str | None = None


def embedded_uri(root: Path) -> str:
    """The embedded store of a project: sqlite in mlflow/mlflow.db."""
    return f"sqlite:///{store_db(root).resolve()}"


# embedded stores this process opened: mlflow.set_tracking_uri exports the URI to the environment, where it must not
# pass for a person's MLFLOW_TRACKING_URI when the process opens another project (a copy, in one test process)
_OPENED: set[str] = set()


def tracking_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI when set (a server), else the project's embedded store."""
    given = os.environ.get("MLFLOW_TRACKING_URI")
    return given if given and given not in _OPENED else embedded_uri(root)


def open_store(root: Path, experiment: str) -> Store:
    """Point MLflow at the project's store and get or create the experiment (artifacts in mlflow/artifacts). The
    embedded store's artifact locations are first moved to where the project lies now (see `relocation`); a
    server's are never touched."""
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    found = client.get_experiment_by_name(experiment)  # MLflow creates the db (and Default) first
    if uri == embedded_uri(root):
        _OPENED.add(uri)
        relocate(root)
    artifacts = store_artifacts(root).resolve().as_uri() if uri.startswith("sqlite:") else None
    if found is not None:
        return Store(uri, client, found.experiment_id, artifacts)
    return Store(uri, client, client.create_experiment(experiment, artifact_location=artifacts), artifacts)
