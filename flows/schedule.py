"""The deployments prefect.yaml declares (`retrain` on its schedule, `check-champion` on its trigger), served from
one process by `chatgraft serve`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prefect.deployments.runner import EntrypointType
from prefect.schedules import Cron

DEPLOYMENTS = ("retrain", "check-champion")


@dataclass(frozen=True)
class Deployment:
    """What prefect.yaml says about one deployment."""

    name: str
    crons: list[Cron]
    parameters: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    description: str = ""
    triggers: list[dict[str, Any]] = field(default_factory=list)


def read_deployment(prefect_yaml: Path, name: str) -> Deployment:
    """The named deployment of prefect.yaml, with its cron schedules (and their time zones) and event triggers."""
    config = yaml.safe_load(prefect_yaml.read_text()) or {}
    found = [d for d in config.get("deployments", []) if d.get("name") == name]
    if not found:
        raise KeyError(f"{prefect_yaml}: no deployment named {name!r} under `deployments`")
    deployment = found[0]
    crons = [Cron(s["cron"], timezone=s.get("timezone"), active=s.get("active", True))
             for s in deployment.get("schedules", []) if "cron" in s]
    return Deployment(name, crons, deployment.get("parameters", {}), deployment.get("tags", []),
                      deployment.get("description", ""), deployment.get("triggers", []))


def serve_deployments(project_dir: Path) -> None:
    """Create the retrain and check-champion deployments on the Prefect API and run their flow runs here (on
    schedule, on their triggers, or when started), one at a time, until interrupted. The project directory
    parameter is made absolute for the runs."""
    from prefect import serve
    from prefect.events import DeploymentTriggerTypes
    from pydantic import TypeAdapter

    from flows.champion_check import check_champion
    from flows.retrain import retrain

    triggers = TypeAdapter(DeploymentTriggerTypes)
    runners = []
    for flow, name in ((retrain, "retrain"), (check_champion, "check-champion")):
        deployment = read_deployment(project_dir / "prefect.yaml", name)
        runners.append(flow.to_deployment(
            name=deployment.name, schedules=deployment.crons, tags=deployment.tags,
            parameters={**deployment.parameters, "project_dir": str(project_dir.resolve())},
            description=deployment.description, entrypoint_type=EntrypointType.MODULE_PATH,
            triggers=[triggers.validate_python(spec) for spec in deployment.triggers]))
    serve(*runners, limit=1)
