"""The retrain flow end to end on a tiny world: real DVC stages, real MLflow (sqlite), real Prefect (test server)."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import mlflow
import pytest
import requests
import yaml
from huggingface_hub import ModelCard
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect import flow
from prefect.client.schemas.filters import (
    ArtifactFilter, ArtifactFilterKey, TaskRunFilter, TaskRunFilterName, TaskRunFilterTags,
)
from prefect.client.schemas.sorting import TaskRunSort
from prefect.logging.handlers import PrefectConsoleHandler
from prefect.testing.utilities import prefect_test_harness
from transformers import AutoTokenizer
from typer.testing import CliRunner

from flows.cli import app
from flows.console import quiet_console
from flows.context import open_project
from flows.dvc_project import DvcProject
from flows.fair_comparison import champion_on_current_data, current_fingerprint, evaluation_fingerprint
from flows.params_file import apply_overrides
from flows.tracking import history, registry
from flows.tracking.answers import SCORES, numbered
from flows.retrain import RetrainResult, retrain
from flows.stale_outputs import recorded_note, stale_outputs_note
from flows.tracking.store import embedded_uri
from pipelines.atomic import read_jsonl
from pipelines.candidates import COMPETING_PREFIXES
from pipelines.layout import ALIGN_MANIFEST
from pipelines.leaderboard import Leaderboard
from tests.conftest import ONE_BRANCH_PARAMS, TINY_PARAMS, answers_health, ask_served_model, free_port, make_project, wait_until

pytestmark = pytest.mark.integration
MODEL = "chatgraft-chat"
STAGES = ["inputs", "corpus", "upstream", "cp", "merge@1.0", "evaluate@base", "evaluate@chat", "evaluate-cp",
          "evaluate-merged@1.0", "curate", "pick", "align@c-rlft", "evaluate-aligned@c-rlft", "finetune@sft",
          "merge-finetuned@sft-1.0", "evaluate-finetuned@sft-1.0", "leaderboard", "plots"]
# one merge ratio (a test adds a second) and one align method keep the module short; both align methods are the
# same stage code (unit tests cover sft and c-rlft). The fine-tuned-first family at one ratio, as `make run` has it
FINETUNED = "finetuned-sft-merged-1.0"
UMASK = 0o022  # the usual one: outputs readable by everyone on the machine
FLOW_PARAMS = {**ONE_BRANCH_PARAMS, "align": {**TINY_PARAMS["align"], "methods": ["c-rlft"]},
               "finetune": {"methods": ["sft"], "ratios": [1.0]},
               "flow": {**TINY_PARAMS["flow"], "answers_view": True}}


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory, prefect_server) -> tuple[Path, object, MlflowClient]:
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    umask = os.umask(UMASK)  # the modes every output must have follow from it: the stages inherit it
    root = make_project(tmp_path_factory.mktemp("flow") / "project", FLOW_PARAMS)
    result, console = run_quietly(root)  # as `chatgraft run` runs it; the reruns stream
    (root.parent / "console.txt").write_text(console)
    yield root, result, MlflowClient(embedded_uri(root), embedded_uri(root))
    os.umask(umask)
    mp.undo()


def run_quietly(root: Path) -> tuple[RetrainResult, str]:
    """The flow as `chatgraft run` runs it (stage logs, quiet console), and what its terminal showed: the lines it
    says and prints, and what a Prefect console handler on the terminal let through."""
    console = io.StringIO()
    with redirect_stdout(console), redirect_stderr(console):
        terminal = PrefectConsoleHandler(sys.stderr)
        logging.getLogger().addHandler(terminal)
        try:
            with quiet_console():
                result = retrain(project_dir=str(root), stage_logs=True)
        finally:
            logging.getLogger().removeHandler(terminal)
    return result, console.getvalue()


def test_every_stage_ran_and_the_winner_became_champion(first_run) -> None:
    root, result, client = first_run
    assert result.reproduced == STAGES
    assert result.winner is not None and result.version == "1" and result.promoted
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(MODEL, "challenger").version) == "1"
    assert "| rank | candidate |" in result.leaderboard and "aligned-c-rlft" in result.leaderboard
    board = json.loads((root / "reports" / "leaderboard.json").read_text())
    assert board["candidates"]["aligned-c-rlft"]["role"] == "candidate"
    assert board["candidates"][FINETUNED]["role"] == "candidate" and FINETUNED in result.leaderboard
    finetuned = root / "models" / "finetuned" / "sft"  # CP -> FT (in the chat format) -> + chat vector
    assert json.loads((finetuned / ALIGN_MANIFEST).read_text())["from"] == "cp"
    merged = root / "models" / "finetuned-merged" / "sft-alpha-1.0"
    assert AutoTokenizer.from_pretrained(merged).chat_template == AutoTokenizer.from_pretrained(finetuned).chat_template
    (move,) = history.read(open_project(root).store, MODEL)  # the flow's decision, in the promotion history
    assert (move.decision, move.from_version, move.to_version) == ("promoted", "none", "1")
    assert move.flow_run != "none" and move.actor.startswith("retrain flow run")
    assert history.HISTORY_EXPERIMENT in client.get_registered_model(MODEL).description
    page = client.get_model_version(MODEL, "1").description  # what a person reads in the registry: kept true
    assert page.startswith(f"## Version 1: {result.winner}") and "**Status: champion** since" in page
    assert f"promoted by {move.actor}" in page and "| metric | this version |" in page
    assert "| answer_accuracy |" in page and "`chatgraft promote 1" not in page and "| rank | candidate |" in page


def test_every_output_is_as_readable_as_the_umask_allows(first_run) -> None:
    """Others on the machine (a serving user, a teammate) read what a run wrote: every file and folder of every
    output dvc.yaml declares, the aligned weights included (safetensors writes its files 0600)."""
    root, _, _ = first_run
    outputs = [root / path for path in DvcProject(root).declared_outputs() if (root / path).exists()]
    entries = [*outputs, *(p for output in outputs if output.is_dir() for p in output.rglob("*"))]
    assert any(p.name == "model.safetensors" and "aligned" in p.parts for p in entries)
    wanted = lambda path: (0o777 if path.is_dir() else 0o666) & ~UMASK & 0o555  # noqa: E731  read (and enter)
    private = [f"{p.relative_to(root)} {stat.filemode(p.stat().st_mode)}" for p in entries
               if not p.is_symlink() and stat.S_IMODE(p.stat().st_mode) & wanted(p) != wanted(p)]
    assert not private


def test_the_console_has_a_line_a_task_and_nothing_of_prefect_or_mlflow(first_run) -> None:
    root, result, _ = first_run
    lines = (root.parent / "console.txt").read_text().splitlines()
    tasks = ["register", "register", "promote", "push", "save-experiment", "answers-view"]
    assert [line.split()[0] for line in lines] == ["intake", "import-documents", "link-inputs", *STAGES, *tasks], lines
    told = {line.split()[0]: " ".join(line.split()[1:]) for line in lines}
    assert told["import-documents"] == "nothing to import (data.source: generator)"
    assert [line.split(maxsplit=1)[1] for line in lines if line.startswith("register")] == [
        f"version 1: {result.winner} (registered now)", "challenger: version 1"]
    assert told["promote"].startswith("version 1 promoted to champion: ")
    evaluations = [stage for stage in STAGES if stage.startswith("evaluate")]
    assert told["answers-view"] == (f"{len(evaluations)} of {len(evaluations)} candidates' answers in MLflow's "
                                    "evaluation view")


def test_each_stages_output_is_in_its_log_file_and_its_mlflow_run(first_run) -> None:
    root, _, client = first_run
    (logs,) = (root / ".chatgraft" / "logs").iterdir()  # one folder a flow run, named after it
    views = [f"{stage}.answers" for stage in STAGES if stage.startswith("evaluate")]  # each evaluation's view's
    assert sorted(log.stem for log in logs.iterdir()) == sorted(stage.replace("@", "-") for stage in STAGES + views)
    cp_log = (logs / "cp.log").read_bytes().decode()
    assert "Running stage 'cp'" in cp_log and "\r" in cp_log  # DVC's lines and the Trainer's progress bar
    experiment = client.get_experiment_by_name("chatgraft").experiment_id
    (cp_run,) = client.search_runs([experiment], "attributes.run_name = 'cp'")
    assert [a.path for a in client.list_artifacts(cp_run.info.run_id, "logs")] == ["logs/cp.log"]


def test_each_candidates_answers_are_in_the_evaluation_view_with_the_stages_scores(first_run) -> None:
    """Every answer the evaluate stage wrote is a trace of its run (question in, answer out) carrying that
    stage's per-answer scores, so two candidates' runs compare their answers side by side in the MLflow UI."""
    root, _, client = first_run
    experiment = client.get_experiment_by_name("chatgraft").experiment_id
    mlflow.set_tracking_uri(embedded_uri(root))
    questions = {}
    for candidate, stage in (("cp", "evaluate-cp"), ("merged-1.0", "evaluate-merged@1.0")):
        (run,) = client.search_runs([experiment], f"tags.stage = '{stage}'")
        assert run.data.tags["mlflow.runType"] == "genai_evaluate" and run.info.status == "FINISHED"
        samples = read_jsonl(root / "reports" / "samples" / f"{candidate}.jsonl")
        traces = mlflow.search_traces(locations=[experiment], run_id=run.info.run_id, return_type="list")
        assert len(traces) == len(samples)
        by_number = numbered(samples)
        for trace in traces:
            asked = json.loads(trace.data.request)
            sample = by_number[asked["suite"], asked["number"]]
            assert asked["question"] == sample["prompt"] and json.loads(trace.data.response) == sample["answer"]
            scores = {a.name: a.value for a in trace.info.assessments if a.name in SCORES}
            assert scores == {name: sample[name] for name in SCORES if name in sample}
        graded = [float(s["correct"]) for s in samples if "correct" in s]
        assert run.data.metrics["correct/mean"] == pytest.approx(sum(graded) / len(graded))
        questions[candidate] = {(suite, number, s["prompt"]) for (suite, number), s in by_number.items()}
    assert questions["cp"] == questions["merged-1.0"]  # the same questions: the view pairs their answers
    with get_client(sync_client=True) as prefect:  # logged in the background, while the next stage ran
        runs = prefect.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(
            any_=["evaluate-cp: answers view", "evaluate-merged@1.0"])), sort=TaskRunSort.EXPECTED_START_TIME_ASC)
    first = {run.name: run for run in reversed(runs)}  # the first run's (the module's reruns come later)
    assert first["evaluate-cp: answers view"].start_time < first["evaluate-merged@1.0"].end_time


def test_dvc_metrics_fit_a_terminal_and_the_plots_open_offline(first_run) -> None:
    root, _, client = first_run
    dvc = [sys.executable, "-m", "dvc"]
    table = subprocess.run([*dvc, "metrics", "show"], cwd=root, capture_output=True, text=True, check=True).stdout
    assert "metrics/eval/aligned/aligned-c-rlft.json" in table and "winner.name" in table
    assert max(map(len, table.splitlines())) <= 300, table  # one row a model, one column a metric
    subprocess.run([*dvc, "plots", "show"], cwd=root, capture_output=True, check=True)
    page = (root / "dvc_plots" / "index.html").read_text()
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page)  # nothing fetched from the internet
    for figure in ("ratio_sweep", "candidates", "cp_loss", "upstream_loss", "align_loss"):
        assert (root / "plots" / f"{figure}.png").read_bytes().startswith(b"\x89PNG")
        assert f"{figure}.png" in page
    (plots_run,) = client.search_runs([client.get_experiment_by_name("chatgraft").experiment_id],
                                      "tags.stage = 'plots'")
    assert {"plots/ratio_sweep.png", "plots/candidates.png"} <= {
        a.path for a in client.list_artifacts(plots_run.info.run_id, "plots")}


def test_leaderboard_and_promotion_are_prefect_artifacts(first_run) -> None:
    _, result, _ = first_run
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["leaderboard"])))
        promotion = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["promotion"])))
    assert artifacts and artifacts[0].type == "markdown"
    assert "| rank | candidate |" in artifacts[0].data and result.winner in artifacts[0].data
    assert "Version 1: promoted to **champion**" in promotion[0].data and "- no champion yet" in promotion[0].data


def test_training_merge_and_evaluation_tasks_hold_gpu_slots(first_run) -> None:
    with get_client(sync_client=True) as client:
        gpu_runs = client.read_task_runs(task_run_filter=TaskRunFilter(tags=TaskRunFilterTags(all_=["gpu"])))
        limit = client.read_global_concurrency_limit_by_name("tag:gpu")
    assert {run.name for run in gpu_runs} >= {"cp", "merge@1.0", "align@c-rlft", "evaluate@base", "evaluate@chat",
                                              "evaluate-cp", "evaluate-merged@1.0", "evaluate-aligned@c-rlft",
                                              "finetune@sft", "merge-finetuned@sft-1.0", "evaluate-finetuned@sft-1.0"}
    assert not {run.name for run in gpu_runs} & {"inputs", "corpus", "upstream", "curate", "pick", "leaderboard"}
    assert limit.limit == 1  # flow.gpu_slots


def test_version_carries_lineage(first_run) -> None:
    root, result, client = first_run
    tags = client.get_model_version(MODEL, "1").tags
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert re.fullmatch(r"[0-9a-f]{40}", tags["git_sha"])
    assert tags["prefect_flow_run_id"] not in ("", "none")
    assert tags["dvc_data_md5"] == next(o["md5"] for o in lock["corpus"]["outs"] if o["path"] == "data/corpus")
    assert tags["dvc_model_md5"] in {o["md5"] for entry in lock.values() for o in entry.get("outs", [])}
    assert tags["promotion.decision"] == "promoted" and tags["promotion.previous_champion"] == "none"


def test_stage_runs_are_nested_and_tracked(first_run) -> None:
    root, result, client = first_run
    experiment = client.get_experiment_by_name("chatgraft")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.info.run_name.startswith("retrain-"))
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(STAGES) | {"register"} <= set(children)
    cp = children["cp"]
    assert len(client.get_metric_history(cp.info.run_id, "cp_loss/loss")) > 1  # the curve, from the plot file
    assert client.get_metric_history(cp.info.run_id, "loss")  # live, from the Trainer's MLflow callback
    assert len(client.get_metric_history(cp.info.run_id, "tokens_per_second")) > 1  # live throughput, per log
    assert len(client.get_metric_history(cp.info.run_id, "eval_perplexity")) > 1  # held-out, every eval_every
    assert cp.data.params["cp.steps"] == "20"
    assert cp.data.tags["dvc.md5.models/cp"] and cp.data.tags["cached"] == "false"
    samples = [a.path for a in client.list_artifacts(children["evaluate-merged@1.0"].info.run_id, "tables")]
    assert samples == ["tables/merged-1.0.json"]
    table = json.loads(Path(client.download_artifacts(children["evaluate-merged@1.0"].info.run_id,
                                                      "tables/merged-1.0.json")).read_text())
    assert {"suite", "prompt", "answer", "reference", "correct", "token_f1", "refused"} <= set(table["columns"])
    suite = table["columns"].index("suite")
    assert {row[suite] for row in table["data"]} == {"instruction", "multiturn", "safety"}
    every_suite = {"answer_accuracy", "exact_match", "token_f1", "termination_rate", "repetition_rate", "distinct_2",
                   "language_consistency", "multiturn_accuracy", "refusal_rate", "false_refusal_rate",
                   "target_perplexity", "answers_per_second"}  # the speed from metrics/speed, the rest the scores
    assert every_suite <= set(children["evaluate-cp"].data.metrics)
    assert list((root.parent / "dvc-remote").rglob("*"))  # outputs pushed to the local remote
    curate = children["curate"]
    assert curate.data.metrics["kept"] > 0 and "reports/align/curation.json" in [
        a.path for a in client.list_artifacts(curate.info.run_id, "reports/align")]
    assert client.get_metric_history(children["align@c-rlft"].info.run_id, "loss")  # live curve


def test_champion_loads_with_mlflow_transformers(first_run) -> None:
    root, _, _ = first_run
    mlflow.set_tracking_uri(embedded_uri(root))
    mlflow.set_registry_uri(embedded_uri(root))
    pipeline = mlflow.transformers.load_model(f"models:/{MODEL}@champion")
    assert pipeline.tokenizer.chat_template
    uri = f"models:/{MODEL}@champion"
    example = mlflow.models.Model.load(uri).load_input_example(uri)
    assert example["messages"][-1]["role"] == "user" and example["max_tokens"] == FLOW_PARAMS["eval"]["max_new_tokens"]
    champion = MlflowClient().get_model_version_by_alias(MODEL, "champion")
    card = ModelCard(Path(mlflow.artifacts.download_artifacts(run_id=champion.run_id,
                                                              artifact_path="model_card.md")).read_text())
    assert card.data.tags[0] == "chatgraft" and "## Evaluation" in card.text and "| answer_accuracy |" in card.text
    assert isinstance(pipeline("what is the city of kato ?", max_new_tokens=3)[0]["generated_text"], str)


def test_champion_is_served_by_mlflow_models_serve(first_run) -> None:
    choice = ask_served_model(first_run[0], f"models:/{MODEL}@champion", "what is the city of kato ?")
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)


def tree_state(folder: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file under `folder`."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


def test_a_copy_reruns_nothing_never_touches_the_original_and_a_new_ratio_runs_only_its_branch(first_run) -> None:
    """The rerun happens in a copy of the project (cp -a): DVC skips every stage there, the registry found at the
    copy's place is the copy's, and nothing of the original changes; then, in the original, a new ratio."""
    root, _, original = first_run
    experiment = original.get_experiment_by_name("chatgraft").experiment_id
    stage_runs = {r.info.run_id: r.info.run_name for r in original.search_runs([experiment], "tags.stage != ''")}
    before = tree_state(root)
    copy = root.parent / "copy"
    subprocess.run(["cp", "-a", str(root), str(copy)], check=True)
    again = retrain(project_dir=str(copy))
    assert again.reproduced == []
    assert tree_state(root) == before  # no run, version, artifact or cache file of the original written
    client = MlflowClient(embedded_uri(copy), embedded_uri(copy))
    locations = [client.get_experiment(experiment).artifact_location,
                 *(run.info.artifact_uri for run in client.search_runs([experiment]))]
    assert all(location.startswith(copy.as_uri() + "/") for location in locations)
    # one parent run that says so, linking the runs that hold each stage's results: no cached copies
    assert {r.info.run_id for r in client.search_runs([experiment], "tags.stage != ''")} == set(stage_runs)
    (parent,) = client.search_runs([experiment], "attributes.run_name LIKE 'retrain-%'", max_results=1,
                                   order_by=["attributes.start_time DESC"])
    assert parent.data.tags["mlflow.note.content"].startswith("DVC reproduced nothing")
    assert stage_runs[parent.data.tags["stage.merge/1.0"]] == "merge@1.0"
    assert {name for key, name in ((k, stage_runs.get(v)) for k, v in parent.data.tags.items())
            if key.startswith("stage.")} == set(STAGES)
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1

    manifest = root / "models" / "aligned" / "c-rlft" / ALIGN_MANIFEST
    aligned_from = json.loads(manifest.read_text())["from"]
    apply_overrides(root / "params.yaml", ["merge.ratios=[1.0, 0.8]"])
    changed = retrain(project_dir=str(root))
    # alignment runs again only when the best merged model changed (align depends on the pick, not on every
    # merged model): then its model is new, and evaluated again
    moved = json.loads(manifest.read_text())["from"] != aligned_from
    assert changed.reproduced == ["merge@0.8", "evaluate-merged@0.8", "pick",
                                  *(["align@c-rlft", "evaluate-aligned@c-rlft"] if moved else []), "leaderboard",
                                  "plots"]


def test_top_k_registers_the_best_eligible_merged_aligned_and_finetuned_models(first_run) -> None:
    root, _, client = first_run
    apply_overrides(root / "params.yaml", ["promote.register_top_k=4"])  # each family has a version to read
    result, console = run_quietly(root)
    assert result.reproduced == ["leaderboard"]
    board = json.loads((root / "reports" / "leaderboard.json").read_text())
    competing = sorted((n for n in board["candidates"] if n.startswith(COMPETING_PREFIXES)),
                       key=lambda n: board["candidates"][n]["rank"])
    assert FINETUNED in competing and len(competing) == 4  # two ratios, one align method, the fine-tuned first
    versions = {v.tags["candidate"]: v for v in client.search_model_versions(f"name = '{MODEL}'")}
    assert set(competing) <= set(versions)
    assert client.get_model_version_by_alias(MODEL, "challenger").tags["candidate"] == board["winner"] == competing[0]
    later = [v for v in client.search_model_versions(f"name = '{MODEL}'") if str(v.version) != "1"]
    assert later and all("| champion (version " in v.description for v in later)  # compared with the champion
    said = [line.split(maxsplit=1)[1] for line in console.splitlines() if line.startswith("register ")]
    assert [line.split(" (")[0] for line in said] == [
        *(f"version {versions[name].version}: {name}" for name in competing), f"challenger: version {result.version}"]
    assert "(registered now)" in said[1] + said[2]  # a run before registered its winner alone
    for name in competing:  # each family's registry tags say how it was made
        tags = versions[name].tags
        if name.startswith("aligned-"):
            assert tags["align_method"] == "c-rlft" and tags["aligned_from"].startswith("merged-")
        elif name.startswith("finetuned-"):
            assert (tags["finetune_method"], tags["merge_ratio"]) == ("sft", "1.0")
            assert tags["source.finetuned"] == "models/finetuned/sft"
        else:
            assert tags["merge_ratio"] == name.removeprefix("merged-")


def test_an_eval_param_re_scores_the_models_and_retrains_nothing(first_run) -> None:
    """eval.* is a param of the evaluate stages alone: a change that changes scores reruns the evaluations and what
    reads their scores, nothing is trained or merged again, and each version's fingerprint is its scores' data."""
    root, _, client = first_run
    pick = root / "reports" / "align" / "pick.json"
    picked = pick.read_text()
    apply_overrides(root / "params.yaml", ["eval.max_new_tokens=6"])
    result = retrain(project_dir=str(root))
    evaluations = {stage.name for stage in DvcProject(root).stages() if stage.name.startswith("evaluate")}
    # align tunes the merged model the scores pick: it is trained again only when the pick changed
    retrained = {"align@c-rlft"} if pick.read_text() != picked else set()
    # inputs reads the eval section for its paths: it links the same files again, and nothing reruns for it
    assert set(result.reproduced) == {"inputs"} | evaluations | {"pick", "leaderboard", "plots"} | retrained
    locked = DvcProject(root).locked_stages()
    for version in client.search_model_versions(f"name = '{MODEL}'"):
        assert version.tags["eval_fingerprint"] == evaluation_fingerprint(locked, version.tags["candidate"])


def test_each_flow_run_is_a_dvc_experiment_and_the_branch_is_left_alone(first_run) -> None:
    """Every run so far (the first, the rerun, new ratios, top-k) is in `dvc exp show` under its
    flow run's name, with its params and metrics; HEAD and the index are as make_project left them."""
    root, _, client = first_run
    runs = client.search_runs([client.get_experiment_by_name("chatgraft").experiment_id],
                              "attributes.run_name LIKE 'retrain-%'")
    named = {run.data.tags["dvc_experiment"] for run in runs}
    shown = json.loads(subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=root,
                                      capture_output=True, text=True, check=True).stdout)
    (baseline,) = [row for row in shown if row["rev"] != "workspace"]
    experiments = {rev["name"]: rev["data"] for exp in baseline["experiments"] for rev in exp["revs"]}
    assert named == set(experiments) and len(named) >= 4
    ratios = {json.dumps(data["params"]["params.yaml"]["data"]["merge"]["ratios"]) for data in experiments.values()}
    assert ratios == {"[1.0]", "[1.0, 0.8]"}
    for data in experiments.values():
        assert data["metrics"]["metrics/leaderboard.json"]["data"]["winner"]["name"]
        assert "answer_accuracy" in data["metrics"]["metrics/eval/cp.json"]["data"]
    runs = CliRunner().invoke(app, ["runs", "--project-dir", str(root)])  # the same runs, in 120 columns
    lines = runs.stdout.splitlines()
    assert runs.exit_code == 0 and max(map(len, lines)) <= 120, runs.output
    assert len([line for line in lines[1:] if not line.startswith(" ")]) == len(named)  # a row a run
    log = subprocess.run(["git", "log", "--format=%s"], cwd=root, capture_output=True, text=True, check=True)
    assert log.stdout.splitlines() == ["init"]  # nothing committed on the branch
    staged = subprocess.run(["git", "diff", "--cached", "--name-only"], cwd=root, capture_output=True, text=True)
    assert staged.stdout == ""


def test_a_dropped_ratios_outputs_are_reported_then_cleaned_and_nothing_reruns(first_run) -> None:
    """merge.ratios back to [1.0]: 0.8's model, scores and reports stay, undeclared, until `chatgraft clean`
    removes them (a dry run first lists them), and `dvc status` stays clean: align never read them, and the
    stages that read their folders record them again."""
    root, _, _ = first_run
    apply_overrides(root / "params.yaml", ["merge.ratios=[1.0]"])
    retrain(project_dir=str(root))
    known, recorded = recorded_note(root)  # found by the flow at its end: status prints it without importing DVC
    stale = ["metrics/eval/merged/merged-0.8.json", "models/merged/alpha-0.8", "reports/merge/alpha-0.8.json",
             "reports/samples/merged-0.8.jsonl", "reports/speed/merged-0.8.json"]
    status = CliRunner().invoke(app, ["status", "--project-dir", str(root)])
    assert status.exit_code == 0, status.output
    (note,) = [line for line in status.output.splitlines() if line.startswith("workspace: ")]
    assert note.startswith("workspace: 5 outputs no stage in dvc.yaml declares any more") and "chatgraft clean" in note
    assert known and note == f"workspace: {recorded}"
    dry = CliRunner().invoke(app, ["clean", "--dry-run", "--project-dir", str(root)])
    assert dry.exit_code == 0, dry.output
    assert [line.split()[0] for line in dry.output.splitlines()[1:6]] == stale
    assert "models/merged/alpha-0.8" in dry.output.splitlines()[2] and "(in DVC's cache)" in dry.output
    assert all((root / path).exists() for path in stale)  # a dry run removes nothing
    done = CliRunner().invoke(app, ["clean", "--project-dir", str(root)])
    assert done.exit_code == 0, done.output
    assert not any((root / path).exists() for path in stale)
    assert (root / "models" / "merged" / "alpha-1.0").is_dir()
    assert not DvcProject(root).out_of_date()  # `dvc status`: nothing to rerun
    (recorded,) = [line for line in done.output.splitlines() if line.startswith("Recorded again")]
    assert "pick" in recorded and "align" not in recorded  # align reads the picked model alone
    assert stale_outputs_note(root) is None


def test_chatgraft_ui_serves_the_registry(first_run) -> None:
    root, _, _ = first_run
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "chatgraft"), "ui", "--project-dir", str(root),
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: answers_health(url), "chatgraft ui")
        found = requests.get(f"{url}/api/2.0/mlflow/registered-models/get", params={"name": MODEL}, timeout=10)
        aliases = {a["alias"] for a in found.json()["registered_model"]["aliases"]}
        assert {"champion", "challenger"} <= aliases
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_champion_is_scored_again_when_the_evaluation_data_changed(first_run) -> None:
    root, _, client = first_run
    ctx = open_project(root)
    held = registry.champion(ctx.store, MODEL)
    candidate = client.get_model_version(MODEL, held.version).tags["candidate"]

    @flow
    def compare_fairly(context):
        return champion_on_current_data(context, held, candidate)

    assert compare_fairly(ctx) is held  # evaluated on the data dvc.lock records now: nothing to do
    registry.set_version_tags(ctx.store, MODEL, held.version, {"eval_fingerprint": "measured on other sets"})
    fresh = compare_fairly(ctx)
    board = Leaderboard.read(root / "reports" / "leaderboard.json").row(candidate).metrics
    assert fresh.version == held.version and fresh.metrics == {k: board[k] for k in fresh.metrics}
    assert "answers_per_second" not in fresh.metrics  # scores only: a timing would make every rerun differ
    tags = client.get_model_version(MODEL, held.version).tags
    assert tags["eval_fingerprint"] == current_fingerprint(ctx, candidate)
    assert client.get_run(tags["eval_run_id"]).data.metrics == fresh.metrics
    assert registry.champion(ctx.store, MODEL).metrics == fresh.metrics
    with get_client(sync_client=True) as prefect:  # the model was loaded holding a gpu slot, like the model stages
        gpu_runs = prefect.read_task_runs(task_run_filter=TaskRunFilter(tags=TaskRunFilterTags(all_=["gpu"])))
    assert f"re-evaluate v{held.version}" in {run.name for run in gpu_runs}


def test_a_version_comes_back_as_the_files_it_was_logged_from(first_run, tmp_path: Path) -> None:
    root, _, _ = first_run
    ctx = open_project(root)
    held = registry.champion(ctx.store, MODEL)
    logged = mlflow.models.get_model_info(f"models:/{MODEL}/{held.version}").flavors["transformers"]
    source = Path(logged["source_model_name"])  # the workspace folder it was registered from
    out = registry.download_checkpoint(ctx.store, MODEL, held.version, tmp_path / "model")
    digest = lambda folder: {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}  # noqa: E731
    assert digest(out) == digest(source)  # weights, tokenizer, chat template, report and marker: nothing re-saved
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # nothing of the download left beside it
    logged_model = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/{held.version}",
                                                            dst_path=str(tmp_path / "logged")))
    card = ModelCard.load(source / "README.md")  # the model card the stage wrote goes with the logged model
    assert (logged_model / "model_card.md").read_text().strip() == card.text.strip()
    assert yaml.safe_load((logged_model / "model_card_data.yaml").read_text())["tags"] == card.data.tags


DUMMY_STAGE = """
  dummy:                    # added by the test: a stage the flow has never heard of, an output at the project root
    cmd: >-
      python -c "import json; json.dump(dict(dummy_score=0.25), open('metrics/dummy.json', 'w'));
      open('hello.txt', 'w').write('hello')"
    meta: {gpu: true}
    deps: [metrics/leaderboard.json]
    outs: [hello.txt]
    metrics:
      - metrics/dummy.json: {cache: false}
"""


def test_a_stage_added_to_dvc_yaml_alone_is_run_tracked_and_given_its_gpu_slot(first_run) -> None:
    """dvc.yaml is the only stage list: a new stage needs no change in the flow (last: it changes the project)."""
    root, _, client = first_run
    (root / "dvc.yaml").write_text((root / "dvc.yaml").read_text() + DUMMY_STAGE)
    result = retrain(project_dir=str(root))
    assert result.reproduced == ["dummy"]
    (run,) = client.search_runs([client.get_experiment_by_name("chatgraft").experiment_id],
                                "tags.stage = 'dummy'")
    assert run.data.metrics["dummy_score"] == 0.25 and run.data.tags["cached"] == "false"
    assert run.data.tags["mlflow.parentRunId"]  # nested under the flow's run like every stage
    assert "hello.txt" in {artifact.path for artifact in client.list_artifacts(run.info.run_id)}  # at the run's root
    with get_client(sync_client=True) as prefect:
        gpu_runs = prefect.read_task_runs(task_run_filter=TaskRunFilter(tags=TaskRunFilterTags(all_=["gpu"])))
    assert "dummy" in {task_run.name for task_run in gpu_runs}
