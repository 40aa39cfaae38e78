"""Where runs and models are kept: the server named by MLFLOW_TRACKING_URI, else the embedded sqlite store."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient


@dataclass(frozen=True)
class Store:
    """An MLflow tracking + registry store and the experiment the flow logs to."""

    uri: str
    client: MlflowClient
    experiment_id: str


def embedded_uri(root: Path) -> str:
    """The embedded store of a project: sqlite in mlflow/mlflow.db."""
    return f"sqlite:///{(root / 'mlflow' / 'mlflow.db').resolve()}"


def tracking_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI when set (a server), else the project's embedded store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or embedded_uri(root)


def open_store(root: Path, experiment: str) -> Store:
    """Point MLflow at the project's store and get or create the experiment (artifacts in mlflow/artifacts)."""
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return Store(uri, client, found.experiment_id)
    artifacts = (root / "mlflow" / "artifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
    return Store(uri, client, client.create_experiment(experiment, artifact_location=artifacts))
