"""The `retrain` deployment as prefect.yaml declares it, served from one process by `chatgraft serve`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prefect.deployments.runner import EntrypointType
from prefect.schedules import Cron

DEPLOYMENT = "retrain"


@dataclass(frozen=True)
class RetrainDeployment:
    """What prefect.yaml says about the retrain deployment."""

    name: str
    crons: list[Cron]
    parameters: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    description: str = ""


def read_deployment(prefect_yaml: Path, name: str = DEPLOYMENT) -> RetrainDeployment:
    """The named deployment of prefect.yaml, with its cron schedules (and their time zones)."""
    config = yaml.safe_load(prefect_yaml.read_text()) or {}
    found = [d for d in config.get("deployments", []) if d.get("name") == name]
    if not found:
        raise KeyError(f"{prefect_yaml}: no deployment named {name!r} under `deployments`")
    deployment = found[0]
    crons = [Cron(s["cron"], timezone=s.get("timezone"), active=s.get("active", True))
             for s in deployment.get("schedules", []) if "cron" in s]
    return RetrainDeployment(name, crons, deployment.get("parameters", {}), deployment.get("tags", []),
                             deployment.get("description", ""))


def serve_retrain(project_dir: Path) -> None:
    """Create the retrain deployment on the Prefect API and run its flow runs here, on schedule or when
    triggered, until interrupted. The project directory parameter is made absolute for the runs."""
    from flows.retrain import retrain

    deployment = read_deployment(project_dir / "prefect.yaml")
    parameters = {**deployment.parameters, "project_dir": str(project_dir.resolve())}
    retrain.serve(name=deployment.name, schedules=deployment.crons, parameters=parameters, tags=deployment.tags,
                  description=deployment.description, limit=1, entrypoint_type=EntrypointType.MODULE_PATH)
