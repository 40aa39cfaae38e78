"""What every task of a flow run needs: the project's layout, params, DVC project, MLflow store and parent run."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pipelines.config import Params, ParamsError, load_params, with_world_defaults
from pipelines.layout import Layout

if TYPE_CHECKING:  # DVC and MLflow are imported by what opens them: checking inputs needs neither
    from flows.device_slots import DeviceSlots
    from flows.dvc_project import DvcProject
    from flows.tracking import Store


@dataclass(frozen=True)
class RunContext:
    """One retrain flow run over one project directory."""

    root: Path
    params: Params
    raw_params: dict[str, Any]
    dvc: DvcProject
    store: Store
    slots: DeviceSlots
    parent_run_id: str = ""
    stage_logs: Path | None = None  # a folder: each stage's output goes to <stage>.log there, one line to the terminal

    @property
    def layout(self) -> Layout:
        return Layout(self.root)


def require_usable_inputs(params: Params, root: Path) -> None:
    """Raise ParamsError listing every input params.yaml names that a run would trip on (paths, sets, model
    folders, the inbox, an S3 corpus), so that a run refuses before its first stage instead of failing hours in."""
    from flows.inbox import inbox_problem  # boto3, transformers: only for the commands that check inputs
    from pipelines.preflight import input_problems

    problems = input_problems(params, root)
    if params.flow.inbox and (problem := inbox_problem(params.flow.inbox, root)):
        problems.append(f"flow.inbox: {problem}")
    documents = params.data.documents if params.data.source == "documents" else None
    if documents and documents.startswith("s3://") and (problem := inbox_problem(documents, root)):
        problems.append(f"data.documents: {problem}")  # a folder is checked with the other paths
    if problems:
        raise ParamsError("\n  ".join([f"{root / 'params.yaml'}: inputs a run cannot use", *problems]))


def open_registry(root: Path) -> tuple[Params, Store]:
    """Validate params.yaml, then open the MLflow store of `root`: what the registry's commands need (no DVC)."""
    from flows.tracking import open_store

    params = load_params(root.resolve() / "params.yaml")
    return params, open_store(root.resolve(), params.promote.experiment)


def open_project(root: Path) -> RunContext:
    """Validate params.yaml, then open the DVC project and the MLflow store of `root`, and share out the slots."""
    from flows.device_slots import DeviceSlots
    from flows.dvc_project import DvcProject

    root = root.resolve()
    params, store = open_registry(root)
    raw = with_world_defaults(yaml.safe_load((root / "params.yaml").read_text()))  # logged as they take effect
    slots = DeviceSlots.for_run(params)
    # stages side by side each take DVC's repository lock to start and to record their outputs: wait for it
    return RunContext(root, params, raw, DvcProject(root, wait_for_lock=slots.side_by_side), store, slots)
