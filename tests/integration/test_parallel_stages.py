"""Stages side by side (`flow.gpu_slots: 2`): stages DVC's graph does not order overlap in time, the models score
exactly as with one slot, and DVC's bookkeeping stays whole. Real DVC, MLflow and Prefect (test server) on the tiny world."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.testing.utilities import prefect_test_harness

from flows.dvc_project import DvcProject
from flows.retrain import retrain
from tests.conftest import ONE_BRANCH_PARAMS, TINY_PARAMS, make_project

pytestmark = pytest.mark.integration
EVALUATIONS = {"evaluate@base", "evaluate@chat", "evaluate-cp", "evaluate-merged@1.0"}
# one torch thread a stage process in both runs: CPU floats depend on the thread count. One merge branch: four
# evaluations, two of which DVC's graph lets start right after upstream, beside CP
PARAMS = {**ONE_BRANCH_PARAMS, "flow": {**TINY_PARAMS["flow"], "answers_view": False, "threads_per_slot": 1}}


def scores(root: Path) -> dict[str, dict]:
    """Every evaluation's metrics file, by path."""
    return {str(path.relative_to(root)): json.loads(path.read_text())
            for path in sorted((root / "metrics" / "eval").rglob("*.json"))}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory):
    """The same project twice, the flow with one slot in the first and two in the second. Yields the second, both
    runs' scores, the second run's result and its task runs."""
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    with prefect_test_harness(server_startup_timeout=120):
        one = make_project(tmp_path_factory.mktemp("one-slot") / "project", PARAMS)
        retrain(project_dir=str(one), stage_logs=True)
        two = make_project(tmp_path_factory.mktemp("two-slots") / "project",
                           {**PARAMS, "flow": {**PARAMS["flow"], "gpu_slots": 2}})
        state = retrain(project_dir=str(two), stage_logs=True, return_state=True)
        with get_client(sync_client=True) as client:
            task_runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
        yield two, scores(one), scores(two), state.result(), task_runs
    mp.undo()


def spans(task_runs: list, names: set[str]) -> dict[str, tuple]:
    """Start and end of the task runs named."""
    found = {run.name: (run.start_time, run.end_time) for run in task_runs if run.name in names}
    assert set(found) == names and all(start and end for start, end in found.values())
    return found


def overlapping(found: dict[str, tuple]) -> list[tuple[str, str]]:
    return [(a, b) for a in found for b in found if a < b and found[a][0] < found[b][1] and found[b][0] < found[a][1]]


def test_independent_stages_ran_side_by_side_two_at_most(two_runs) -> None:
    root, _, _, result, task_runs = two_runs
    assert set(result.reproduced) == {stage.name for stage in DvcProject(root).stages()} - {"inbox"}
    evaluations = spans(task_runs, EVALUATIONS)
    assert overlapping(evaluations), f"no two evaluations ran at the same time: {evaluations}"
    gpu = spans(task_runs, EVALUATIONS | {"cp", "merge@1.0"})
    most_at_once = max(sum(start <= gpu[name][0] < end for start, end in gpu.values()) for name in gpu)
    assert most_at_once <= 2  # two slots: never three of them at once
    order = spans(task_runs, {"cp", "merge@1.0", "evaluate-merged@1.0"})  # DVC's graph: a reader after its source
    assert order["cp"][1] <= order["merge@1.0"][0] and order["merge@1.0"][1] <= order["evaluate-merged@1.0"][0]


def test_two_slots_score_exactly_as_one(two_runs) -> None:
    _, one_slot, two_slots, _, _ = two_runs
    assert len(one_slot) == len(EVALUATIONS)
    assert two_slots == one_slot


def test_dvc_bookkeeping_is_whole_after_a_parallel_run(two_runs) -> None:
    root, _, _, _, _ = two_runs
    project = DvcProject(root)
    assert project.out_of_date() == {}  # a rerun reproduces nothing
    assert {stage.name for stage in project.stages()} <= set(project.locked_stages())
    rwlock = root / ".dvc" / "tmp" / "rwlock"  # DVC's read/write locks of paths: none left held
    assert not rwlock.exists() or not any(json.loads(rwlock.read_text()).values())
