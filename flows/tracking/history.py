"""The promotion history: every decision about `champion` as a run of an MLflow experiment of its own.

A version's tags hold only its latest decision and MLflow keeps no alias history; this experiment keeps every
decision (the flow's policy, `chatgraft promote` / `rollback`, a move made in the MLflow UI and heard by `chatgraft
watch`, a move found afterwards), so the project can say who was champion at any time and why. `chatgraft history`
prints it. Every entry that moves `champion` is also a Prefect event, `chatgraft.champion.moved`, that automations can
start deployments on, wherever one can hear it: in a Prefect flow, or where a Prefect server is named. A person's
command on the embedded default imports no Prefect (Prefect's ephemeral API runs no automations).
"""
from __future__ import annotations

import os
import sys
import tomllib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mlflow.entities import RunStatus

from flows.tracking.store import Store

HISTORY_EXPERIMENT = "chatgraft-promotions"
UI_MOVE = "moved in the MLflow UI"
UI_REMOVAL = "champion removed in the MLflow UI"
REVERTED = "UI move reverted"
# decisions that point `champion` at the version they are recorded on
MOVES = ("promoted", "promoted by hand", "rolled back to", UI_MOVE)
MOVED_EVENT = "chatgraft.champion.moved"


@dataclass(frozen=True)
class HistoryEntry:
    """One decision: when, which model, from which champion to which version (the same when nothing moved)."""

    at: str
    model: str
    decision: str
    from_version: str
    to_version: str
    actor: str
    reasons: str
    flow_run: str


def _experiment_id(store: Store) -> str:
    found = store.client.get_experiment_by_name(HISTORY_EXPERIMENT)
    if found is not None:
        return found.experiment_id
    return store.client.create_experiment(HISTORY_EXPERIMENT, artifact_location=store.artifact_location,
                                          tags={"chatgraft.role": "promotion history"})


def record(store: Store, model: str, version: str, decision: str, reasons: list[str], actor: str,
           from_version: str, to_version: str) -> HistoryEntry:
    """Add one decision about `version` (champion went from `from_version` to `to_version`, "none" for no
    champion, the same when nothing moved) to the history, and announce a move as a Prefect event where one can be
    heard."""
    entry = HistoryEntry(at=datetime.now(timezone.utc).isoformat(timespec="seconds"), model=model, decision=decision,
                         from_version=from_version, to_version=to_version, actor=actor, reasons="; ".join(reasons),
                         flow_run=_flow_run())
    tags = {f"promotion.{field}": value for field, value in vars(entry).items()}
    run = store.client.create_run(_experiment_id(store), run_name=f"{model}: {decision} v{version}", tags=tags)
    store.client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))
    if from_version != to_version and ("prefect" in sys.modules or _prefect_server_named()):
        announce(entry)
    return entry


def _flow_run() -> str:
    if "prefect" not in sys.modules:  # a process that never imported Prefect runs no flow
        return "none"
    from prefect.runtime import flow_run

    return str(flow_run.id or "none")


def _prefect_server_named() -> bool:
    """Whether this process is told of a Prefect server without importing Prefect: PREFECT_API_URL in the
    environment or in Prefect's active profile."""
    if os.environ.get("PREFECT_API_URL"):
        return True
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    try:
        profiles = tomllib.loads(Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active", "")
    return bool(profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL"))


def announce(entry: HistoryEntry) -> None:
    """Emit `chatgraft.champion.moved` about the registered model, the versions it left and took as related
    resources (roles `from` and `to`), and the decision, actor and reasons as payload."""
    from prefect.events import emit_event

    emit_event(event=MOVED_EVENT, resource={"prefect.resource.id": f"mlflow.registered-model.{entry.model}",
                                            "prefect.resource.name": entry.model},
               related=[{"prefect.resource.id": f"mlflow.model-version.{entry.model}.{version}",
                         "prefect.resource.role": role, "prefect.resource.name": f"version {version}"}
                        for role, version in (("from", entry.from_version), ("to", entry.to_version))
                        if version != "none"],
               payload={name: value for name, value in vars(entry).items() if name != "model"})


def recorded_champion(store: Store, model: str) -> str:
    """The version the history last made champion ("none" when it holds no move)."""
    entries = read(store, model)
    return entries[-1].to_version if entries else "none"


def left_unrecorded(store: Store, model: str, version: str) -> bool:
    """Whether the last entry moved `champion` away from `version` without the entry before it recording its
    arrival there: a move that found `version` holding the alias (its UI move not yet heard) and replaced it."""
    entries = read(store, model)
    return bool(entries) and entries[-1].from_version == version != entries[-1].to_version and (
        len(entries) < 2 or entries[-2].to_version != version)


def read(store: Store, model: str) -> list[HistoryEntry]:
    """Every recorded decision about `model`, oldest first."""
    found = store.client.get_experiment_by_name(HISTORY_EXPERIMENT)
    if found is None:
        return []
    runs = store.client.search_runs([found.experiment_id], f"tags.`promotion.model` = '{model}'",
                                    order_by=["attributes.start_time ASC"], max_results=50_000)
    fields = HistoryEntry.__dataclass_fields__
    return [HistoryEntry(**{name: run.data.tags.get(f"promotion.{name}", "") for name in fields}) for run in runs]
