"""What a killed run left behind, closed by the next run: Prefect runs left Running, MLflow runs left RUNNING,
slots still counted, registry versions and champion moves left half-recorded, outputs left half-written, and the
processes its watchdog stopped.

It runs while the workspace lock is held, so every other flow run of this workspace still marked Running is known
to be dead: its process would hold the lock.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

from mlflow.entities import Run, RunStatus
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter, FlowRunFilterId, FlowRunFilterState, FlowRunFilterStateType, FlowRunFilterTags, TaskRunFilter,
    TaskRunFilterState, TaskRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Crashed

from flows.slots import embedded, release_dead_gpu_slots, revoke_expired_leases
from flows.tracking.store import Store
from flows.watchdog import take_record
from flows.workspace import STATE_DIR
from pipelines.atomic import staging_left_behind

UNFINISHED = [StateType.PENDING, StateType.RUNNING, StateType.CANCELLING, StateType.SCHEDULED]
FOUND_BY_TAG = "chatgraft.crashed_found_by"
WORKSPACE_TAG_PREFIX = "chatgraft-workspace:"


@dataclass
class Recovery:
    """What one run found and closed of the runs before it."""

    flow_runs: list[str] = field(default_factory=list)
    task_runs: list[str] = field(default_factory=list)
    mlflow_runs: list[str] = field(default_factory=list)
    slots: list[str] = field(default_factory=list)
    staging: list[str] = field(default_factory=list)
    processes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.flow_runs or self.task_runs or self.mlflow_runs or self.slots or self.staging
                    or self.processes)

    def summary(self) -> str:
        """One line for the log."""
        return "; ".join(f"{what}: {', '.join(items)}" for what, items in (
            ("crashed flow runs", self.flow_runs), ("their unfinished task runs", self.task_runs),
            ("MLflow runs marked FAILED", self.mlflow_runs), ("slots given back", self.slots),
            ("half-written outputs removed", self.staging),
            ("processes left running, stopped by their run's watchdog", self.processes)) if items)


def tag_workspace(flow_run_id: UUID, workspace: str) -> None:
    """Tag the current flow run with its workspace, so that the next run there can find it if it dies."""
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        client.update_flow_run(flow_run_id, tags=sorted(set(run.tags) | {WORKSPACE_TAG_PREFIX + workspace}))


def _crash_dead_flow_runs(workspace: str, current: UUID, reason: str, recovery: Recovery) -> set[UUID]:
    with get_client(sync_client=True) as client:
        dead = [run for run in client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[WORKSPACE_TAG_PREFIX + workspace]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=UNFINISHED)))) if run.id != current]
        if not dead:
            return set()
        for run in dead:
            client.set_flow_run_state(run.id, Crashed(message=reason), force=True)
            recovery.flow_runs.append(run.name)
        ids = {run.id for run in dead}
        for task_run in client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(ids))),
                task_run_filter=TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=UNFINISHED)))):
            client.set_task_run_state(task_run.id, Crashed(message=reason), force=True)  # gives its gpu slot back
            recovery.task_runs.append(task_run.name)
    return ids


def _flow_run_over(flow_run_id: str, dead: set[UUID]) -> bool:
    try:
        run_id = UUID(flow_run_id)
    except ValueError:
        return False
    if run_id in dead:
        return True
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    return state is not None and state.is_final()


def _fail(store: Store, run: Run, found_by: str) -> str:
    store.client.set_tag(run.info.run_id, FOUND_BY_TAG, found_by)
    store.client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
    return run.info.run_name or run.info.run_id


def _fail_orphaned_mlflow_runs(store: Store, dead: set[UUID], found_by: str, recovery: Recovery) -> None:
    """MLflow runs still RUNNING whose flow run is dead or over are marked FAILED, tagged with who found them."""
    for run in store.client.search_runs([store.experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        flow_run_id = run.data.tags.get("prefect_flow_run_id", "")
        if flow_run_id and _flow_run_over(flow_run_id, dead):
            recovery.mlflow_runs.append(_fail(store, run, found_by))


def fail_abandoned_runs(store: Store, flow_run_id: UUID, keep: str, found_by: str) -> list[str]:
    """This flow run's MLflow runs still RUNNING but `keep` (the flow's own), marked FAILED: a task whose service
    call failed could not end its run, and its retry logged under a new one. Returns their names."""
    running = store.client.search_runs(
        [store.experiment_id], f"attributes.status = 'RUNNING' and tags.prefect_flow_run_id = '{flow_run_id}'",
        max_results=1000)
    return [_fail(store, run, found_by) for run in running if run.info.run_id != keep]


def remove_staging_left_behind(root: Path, outputs: list[Path]) -> list[str]:
    """Delete the half-written copies of `outputs` (paths under `root`) that killed stages left beside them; returns
    them, relative to `root`. Call while holding the workspace lock: no stage of this workspace writes then."""
    found = [path for output in outputs for path in staging_left_behind(root / output)]
    for path in found:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    return [str(path.relative_to(root)) for path in found]


def _project_root(workspace: str) -> Path:
    """The project path a workspace id names (`host:path`, flows.workspace.workspace_id)."""
    return Path(workspace.partition(":")[2])


def recover_crashed_runs(store: Store, workspace: str, current: UUID, current_name: str) -> Recovery:
    """Close what killed runs of this workspace left open (call while holding the workspace lock)."""
    found_by = f"flow run {current_name} ({current})"
    reason = f"found dead by {found_by}: its process had ended without finishing the run"
    recovery = Recovery(processes=take_record(_project_root(workspace) / STATE_DIR))
    dead = _crash_dead_flow_runs(workspace, current, reason, recovery)
    _fail_orphaned_mlflow_runs(store, dead, found_by, recovery)
    if embedded():
        revoke_expired_leases()
    recovery.slots += release_dead_gpu_slots(dead, reason)
    return recovery
