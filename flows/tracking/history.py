"""The promotion history: every decision about `champion` as a run of an MLflow experiment of its own.

A version's tags hold only its latest decision and MLflow keeps no alias history; this experiment keeps every
decision (the flow's policy, `chatgraft promote` / `rollback`, a move found afterwards), so the project can say who
was champion at any time and why. `chatgraft history` prints it.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from mlflow.entities import RunStatus
from prefect.runtime import flow_run

from flows.tracking.store import Store

HISTORY_EXPERIMENT = "chatgraft-promotions"
MOVES = ("promoted", "promoted by hand", "rolled back to")  # decisions that point `champion` at the version


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
    return store.client.create_experiment(HISTORY_EXPERIMENT, tags={"chatgraft.role": "promotion history"})


def record(store: Store, model: str, version: str, decision: str, reasons: list[str], actor: str,
           previous: str | None) -> HistoryEntry:
    """Add one decision about `version` (champion was `previous`) to the history; returns what was recorded."""
    before = previous or "none"
    entry = HistoryEntry(at=datetime.now(timezone.utc).isoformat(timespec="seconds"), model=model, decision=decision,
                         from_version=before, to_version=version if decision in MOVES else before, actor=actor,
                         reasons="; ".join(reasons), flow_run=str(flow_run.id or "none"))
    tags = {f"promotion.{field}": value for field, value in vars(entry).items()}
    run = store.client.create_run(_experiment_id(store), run_name=f"{model}: {decision} v{version}", tags=tags)
    store.client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))
    return entry


def read(store: Store, model: str) -> list[HistoryEntry]:
    """Every recorded decision about `model`, oldest first."""
    found = store.client.get_experiment_by_name(HISTORY_EXPERIMENT)
    if found is None:
        return []
    runs = store.client.search_runs([found.experiment_id], f"tags.`promotion.model` = '{model}'",
                                    order_by=["attributes.start_time ASC"], max_results=50_000)
    fields = HistoryEntry.__dataclass_fields__
    return [HistoryEntry(**{name: run.data.tags.get(f"promotion.{name}", "") for name in fields}) for run in runs]
