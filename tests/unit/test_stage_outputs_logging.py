"""A stage's declared outputs reach its MLflow run wherever they sit in the project, the project root included."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows.dvc_project import StageSpec
from flows.tracking.stage_runs import log_stage_outputs, tracked_run
from flows.tracking.store import Store


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """A sqlite store of its own (the environment names it, as the flow's stages see it), one experiment."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    return Store(uri, client, client.create_experiment("stages", (tmp_path / "artifacts").as_uri()))


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def _artifacts(client: MlflowClient, run_id: str, folder: str | None = None) -> set[str]:
    found: set[str] = set()
    for entry in client.list_artifacts(run_id, folder):
        found |= _artifacts(client, run_id, entry.path) if entry.is_dir else {entry.path}
    return found


def test_outputs_at_the_project_root_are_logged_like_nested_ones(store: Store, tmp_path: Path) -> None:
    root = tmp_path / "project"
    _write(root, {
        "hello.txt": "hello\n", "table.csv": "name,score\nkato,0.5\n", "score.json": json.dumps({"dummy_score": 0.25}),
        "curve.csv": "step,loss\n1,2.0\n", "figures/loss.png": "png", "scores/more.json": json.dumps({"more": 1}),
        "results/part-0.txt": "a folder of outputs", "reports/nested/notes.txt": "nested",
        "metrics/nested.json": json.dumps({"nested": {"score": 0.5}}),
    })
    spec = StageSpec(name="dummy", param_keys=[],
                     metrics=[Path("score.json"), Path("scores"), Path("metrics/nested.json")],
                     plots=[Path("curve.csv"), Path("figures")],
                     files=[Path("hello.txt"), Path("table.csv"), Path("reports/nested/notes.txt")],
                     dirs=[Path("results")])
    with tracked_run(store, "dummy", {"stage": "dummy"}) as run_id:
        log_stage_outputs(store, run_id, root, spec, params={})
    run = store.client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"dummy_score": 0.25, "more": 1.0, "nested/score": 0.5}
    assert _artifacts(store.client, run_id) == {  # each at its place in the project; a plain folder is DVC's alone
        "hello.txt", "table.csv", "score.json", "curve.csv", "figures/loss.png", "scores/more.json",
        "metrics/nested.json", "reports/nested/notes.txt"}
