"""The MLflow Model Registry side: register a winner once per content hash, read and move aliases."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from flows.tracking.store import Store

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_MD5_TAG = "dvc_model_md5"


@dataclass(frozen=True)
class Champion:
    """The version holding `champion` and the metrics it was registered with."""

    version: str
    metrics: dict[str, float]


def _requirements() -> list[str]:
    return [f"{package}=={version(package)}" for package in ("torch", "transformers", "accelerate", "safetensors")]


def find_version(store: Store, model: str, model_md5: str) -> str | None:
    """The version already registered from these exact weights, if any."""
    for candidate in store.client.search_model_versions(f"name = '{model}'"):
        if candidate.tags.get(MODEL_MD5_TAG) == model_md5:
            return str(candidate.version)
    return None


def register_model(store: Store, run_id: str, model: str, checkpoint: Path, tags: dict[str, str],
                   description: str) -> str:
    """Log the checkpoint with the transformers flavor under `run_id` and register it; returns the version."""
    with mlflow.start_run(run_id=run_id):
        info = mlflow.transformers.log_model(
            transformers_model=str(checkpoint), name="model", task="text-generation",
            registered_model_name=model, pip_requirements=_requirements(),
        )
    registered = str(info.registered_model_version)
    for key, value in tags.items():
        store.client.set_model_version_tag(model, registered, key, value)
    store.client.update_model_version(model, registered, description=description)
    return registered


def champion(store: Store, model: str) -> Champion | None:
    """The current champion, or None when no version holds the alias."""
    try:
        holder = store.client.get_model_version_by_alias(model, CHAMPION)
    except MlflowException:
        return None
    return Champion(str(holder.version), store.client.get_run(holder.run_id).data.metrics)


def set_alias(store: Store, model: str, alias: str, version: str) -> None:
    """Point `alias` at `version`."""
    store.client.set_registered_model_alias(model, alias, version)


def record_decision(store: Store, model: str, version: str, promoted: bool, reasons: list[str], actor: str,
                    previous: str | None) -> None:
    """Audit trail on the version: the decision, why, who or what made it, the previous champion, when."""
    tags = {
        "promotion.decision": "promoted" if promoted else "not promoted",
        "promotion.reasons": "; ".join(reasons),
        "promotion.actor": actor,
        "promotion.previous_champion": previous or "none",
        "promotion.at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    for key, value in tags.items():
        store.client.set_model_version_tag(model, version, key, value)
