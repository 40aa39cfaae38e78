"""Turn a stage's declared files into an MLflow run: params, metrics, curves, tables, artifacts, lineage tags."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, RunStatus

from flows.dvc_project import StageSpec
from flows.tracking.store import Store
from pipelines.atomic import read_jsonl

ANSWERS = Path("reports/samples")  # each candidate's answers, one row a question


def flatten(data: Any, prefix: str = "", sep: str = "/") -> dict[str, Any]:
    """Nested dicts as `a/b/c` keys (or another separator); lists are kept whole as leaves."""
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(flatten(value, f"{prefix}{sep}{key}" if prefix else str(key), sep))
    return flat


def _start_run(store: Store, name: str, tags: dict[str, str], parent_run_id: str | None = None) -> str:
    if parent_run_id:
        tags = {**tags, "mlflow.parentRunId": parent_run_id}
    return store.client.create_run(store.experiment_id, run_name=name, tags=tags).info.run_id


def _end_run(store: Store, run_id: str, ok: bool = True) -> None:
    store.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED))


@contextmanager
def tracked_run(store: Store, name: str, tags: dict[str, str], parent_run_id: str | None = None) -> Iterator[str]:
    """An MLflow run (nested under `parent_run_id` when given) open for the block, its id yielded: FINISHED when
    the block ends, FAILED when it raises or is interrupted."""
    run_id = _start_run(store, name, tags, parent_run_id)
    try:
        yield run_id
    except BaseException:
        _end_run(store, run_id, ok=False)
        raise
    _end_run(store, run_id)


def _log_params(store: Store, run_id: str, params: dict[str, Any], keys: list[str]) -> None:
    selected: dict[str, Any] = {}
    for key in keys:
        value: Any = params
        for part in key.split("."):
            value = value[part]
        selected.update(flatten(value, key, sep="."))
    entries = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in selected.items()]
    if entries:
        store.client.log_batch(run_id, params=entries)


def log_metrics(store: Store, run_id: str, values: dict[str, Any], step: int = 0) -> None:
    """Log the numeric values of a flat dict as metrics (others are skipped)."""
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, step) for k, v in values.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if metrics:
        store.client.log_batch(run_id, metrics=metrics)


def _log_curve(store: Store, run_id: str, csv_path: Path) -> None:
    """Each column of a training curve CSV as a metric history `<file stem>/<column>` (the MLflow UI charts them;
    the plots stage draws the same curves as images)."""
    frame = pd.read_csv(csv_path)
    if frame.empty or "step" not in frame:  # a table of another shape (a user's stage's) is an artifact only
        return
    now = int(time.time() * 1000)
    series = [c for c in frame.select_dtypes("number").columns if c != "step" and frame[c].notna().any()]
    metrics = [Metric(f"{csv_path.stem}/{c}", float(row[c]), now, int(row["step"]))
               for _, row in frame.iterrows() for c in series if pd.notna(row[c])]
    store.client.log_batch(run_id, metrics=metrics)


def _artifact_folder(path: Path) -> str | None:
    """The folder of the run's artifacts that a project file goes to: the one it is in, the run's root (None:
    MLflow refuses `.`) for a file at the project root."""
    return None if path.parent == Path(".") else path.parent.as_posix()


def _files(root: Path, path: Path) -> list[Path]:
    """The files a declared output holds, relative to `root`: the output itself, or those inside it for a folder."""
    folder = root / path
    if not folder.is_dir():
        return [path]
    return sorted(file.relative_to(root) for file in folder.rglob("*") if file.is_file())


def _log_artifact(store: Store, run_id: str, root: Path, path: Path) -> None:
    """Log a project file as an artifact of the run, at the place it has in the project."""
    store.client.log_artifact(run_id, str(root / path), artifact_path=_artifact_folder(path))


def _log_file(store: Store, run_id: str, root: Path, path: Path) -> None:
    """jsonl files become MLflow tables (readable in the UI), training curves (csv) metric histories; JSON reports'
    numbers become metrics too. Every file but a table is also logged as an artifact."""
    if path.suffix == ".jsonl":
        mlflow.log_table(pd.DataFrame(read_jsonl(root / path)), artifact_file=f"tables/{path.stem}.json", run_id=run_id)
        return
    if path.suffix == ".csv":
        _log_curve(store, run_id, root / path)
    elif path.suffix == ".json":
        log_metrics(store, run_id, flatten(json.loads((root / path).read_text())))
    _log_artifact(store, run_id, root, path)


def answer_files(outs: tuple[Path, ...]) -> list[Path]:
    """Of a stage's outputs, the candidates' answers (reports/samples/*.jsonl), which the evaluation view shows."""
    return [path for path in outs if path.parent == ANSWERS and path.suffix == ".jsonl"]


def log_stage_outputs(store: Store, run_id: str, root: Path, spec: StageSpec, params: dict[str, Any]) -> None:
    """Log everything the stage declares in dvc.yaml but its plain folders (models: DVC versions them), read from the
    files it wrote, each at its place in the project (a metrics or plots folder file by file); plots are images."""
    _log_params(store, run_id, params, spec.param_keys)
    for path in [*spec.metrics, *spec.files]:
        for file in _files(root, path):
            _log_file(store, run_id, root, file)
    for path in spec.plots:
        for file in _files(root, path):
            _log_artifact(store, run_id, root, file)


def find_stage_run(store: Store, stage: str, hashes: dict[str, str]) -> str | None:
    """The newest FINISHED run that reproduced `stage` into what dvc.lock records now (`hashes`, path -> md5, equal
    to its `dvc.md5.<path>` tags): its logged results are this workspace's. None when there is none."""
    if not hashes:
        return None
    runs = store.client.search_runs(
        [store.experiment_id], f"tags.stage = '{stage}' AND tags.cached = 'false' AND attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=20)
    return next((run.info.run_id for run in runs
                 if all(run.data.tags.get(f"dvc.md5.{path}") == md5 for path, md5 in hashes.items())), None)


def link_stage_run(store: Store, run_id: str, stage: str, linked_run_id: str) -> None:
    """Tag run `run_id` with `stage.<stage>` = the run holding that stage's results (`@` becomes `/` in the key)."""
    store.client.set_tag(run_id, f"stage.{stage.replace('@', '/')}", linked_run_id)


def describe_stages(store: Store, run_id: str, rows: list[tuple[str, bool, str]]) -> None:
    """The flow run's note in the MLflow UI: each stage (name, reproduced, the run holding its results) as a table,
    headed by what DVC reproduced."""
    reproduced = [stage for stage, ran, _ in rows if ran]
    head = (f"DVC reproduced {len(reproduced)} of {len(rows)} stages." if reproduced else
            "DVC reproduced nothing: every stage was up to date; the runs holding their results are linked below.")
    table = "\n".join(f"| {stage} | {'reproduced' if ran else 'up to date'} | {linked} |" for stage, ran, linked in rows)
    store.client.set_tag(run_id, "mlflow.note.content", f"{head}\n\n| stage | | run |\n|---|---|---|\n{table}\n")


def log_file(store: Store, run_id: str, path: Path, folder: str) -> None:
    """Log a file as an artifact of the run, under `folder`."""
    store.client.log_artifact(run_id, str(path), folder)


def log_text(store: Store, run_id: str, text: str, artifact_file: str) -> None:
    """Log a text (markdown, say) as an artifact file of the run."""
    store.client.log_text(run_id, text, artifact_file)


def set_tags(store: Store, run_id: str, tags: dict[str, str]) -> None:
    """Set several run tags."""
    for key, value in tags.items():
        store.client.set_tag(run_id, key, value)
