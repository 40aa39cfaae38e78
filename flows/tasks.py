"""Prefect tasks of the retrain flow: a DVC stage as a tracked run, registration, promotion, push."""
from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.futures import PrefectFuture

from flows.console import live_line, say, stage_line, task_line
from flows.context import RunContext
from flows.device_slots import devices_needed
from flows.dvc_project import PipelineStage, StageFailed
from flows.fair_comparison import champion_on_current_data, current_fingerprint, record_version_metrics
from flows.inbox import INTAKE_STAGE, Intake, intake_inbox
from flows.leaderboard_view import version_markdown
from flows.lineage import experiment_name, git_revision, lineage_tags
from flows.promotion import apply_policy
from flows.slots import GPU_TAG, wait_for_gpu_slot
from flows.stale_outputs import stale_outputs_note
from flows.tracking import registry
from flows.tracking.answers import ViewWorker
from flows.tracking.stage_runs import (
    answer_files, find_stage_run, link_stage_run, log_file, log_metrics, log_stage_outputs, log_text, set_tags,
    tracked_run,
)
from pipelines.candidates import (
    ALIGNED_PREFIX, COMPETING_PREFIXES, FINETUNED_PREFIX, MERGED_PREFIX, candidate_dir, finetuned_merged_parts,
)
from pipelines.corpus.files import EVAL
from pipelines.evaluate.sets import load_eval_set
from pipelines.inputs import INPUTS, mirror_inputs
from pipelines.layout import ALIGN_MANIFEST
from pipelines.leaderboard import Leaderboard
from pipelines.model_card import CARD as MODEL_CARD, with_evaluation
from pipelines.promotion import Decision
from pipelines.upstream.manifest import read_upstream



@dataclass(frozen=True)
class StageOutcome:
    """A stage's MLflow run, whether DVC skipped it, and whether that run is an earlier flow's (linked, its
    results logged then)."""

    stage: str
    run_id: str
    cached: bool
    linked: bool = False


@task(name="intake", cache_policy=NO_CACHE)
def take_new_data(ctx: RunContext) -> Intake:
    """Take new corpus files from the inbox (`flow.inbox`) into data/incoming and record them as the `inbox`
    stage's output (`dvc commit inbox`)."""
    intake, outcome = intake_inbox(ctx.dvc, ctx.params.flow.inbox, get_run_logger())
    _report(ctx, "intake", outcome)
    return intake


@task(name="import-documents", cache_policy=NO_CACHE)
def import_documents(ctx: RunContext) -> str | None:
    """With `data.source: documents`, import `data.documents` into data/documents/imported with DVC (or update it:
    downloaded again only when the source changed); returns the md5 DVC recorded, None for the generated world."""
    if ctx.params.data.source != "documents" or not ctx.params.data.documents:
        _report(ctx, "import-documents", f"nothing to import (data.source: {ctx.params.data.source})")
        return None
    md5 = ctx.dvc.import_url(ctx.params.data.documents, ctx.layout.documents)
    _report(ctx, "import-documents", f"{ctx.params.data.documents} is "
                                     f"{ctx.layout.documents.relative_to(ctx.root)} (md5 {md5})")
    return md5


@task(name="link-inputs", cache_policy=NO_CACHE)
def link_inputs(ctx: RunContext) -> None:
    """Link the inputs params.yaml names outside the project anew (the `inputs` stage's output, pipelines/inputs.py)
    before DVC compares the stages: a file added to or removed from an input folder is then seen as well as one
    edited in place; with nothing changed the links are the same and the stage stays up to date."""
    linked = {group: ", ".join(inputs) for group, inputs in mirror_inputs(ctx.params, ctx.root).items() if inputs}
    _report(ctx, "link-inputs", "; ".join(f"inputs/{group}: {names}" for group, names in linked.items())
            or "no input from outside the project")


@task(name="stage", task_run_name="{stage}", cache_policy=NO_CACHE)
def _run_stage(ctx: RunContext, stage: str, slots: int = 0) -> StageOutcome:
    """Reproduce one DVC stage and log its files to a nested MLflow run; a stage DVC skips (up to date) is linked
    to the run that reproduced what dvc.lock records, and logged again from its files only when there is none.
    With `ctx.stage_logs`, the stage's output goes to its log file (an artifact of its run) and the terminal gets
    one line. `slots`: the devices its command holds (flow.gpu_slots), 0 for a stage marked no `gpu`."""
    started = time.monotonic()
    cached = ctx.dvc.is_up_to_date(stage)
    earlier = find_stage_run(ctx.store, stage, ctx.dvc.lock_hashes(stage)) if cached else None
    if earlier:
        if ctx.parent_run_id:
            link_stage_run(ctx.store, ctx.parent_run_id, stage, earlier)
        get_run_logger().info("%s: up to date, its results are in MLflow run %s", stage, earlier)
        return _shown(ctx, StageOutcome(stage, earlier, cached=True, linked=True), started)
    tags = {"stage": stage, "cached": str(cached).lower(), **lineage_tags(ctx.root)}
    with tracked_run(ctx.store, stage, tags, ctx.parent_run_id) as run_id:
        if not cached:
            with ctx.slots.hold(slots) as device_env:
                _reproduce(ctx, stage, run_id, device_env)
        log_stage_outputs(ctx.store, run_id, ctx.root, ctx.dvc.spec(stage), ctx.raw_params)
        set_tags(ctx.store, run_id, lineage_tags(ctx.root, ctx.dvc.lock_hashes(stage)))
    get_run_logger().info("%s: %s", stage, "up to date, logged from its files" if cached else "reproduced")
    return _shown(ctx, StageOutcome(stage, run_id, cached), started)


def _reproduce(ctx: RunContext, stage: str, run_id: str, device_env: dict[str, str]) -> None:
    env = {"MLFLOW_TRACKING_URI": ctx.store.uri, "MLFLOW_RUN_ID": run_id, **device_env}
    if ctx.stage_logs is None:
        ctx.dvc.reproduce(stage, env=env)
        return
    log = ctx.stage_logs / f"{stage.replace('@', '-')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        with live_line(stage, log) if not ctx.slots.side_by_side else nullcontext():  # one live line at a time
            ctx.dvc.reproduce(stage, env=env, log=log)
    except StageFailed:
        say(stage_line(stage, "failed", time.monotonic() - started, {}))
        raise
    finally:
        log_file(ctx.store, run_id, log, "logs")


def _shown(ctx: RunContext, outcome: StageOutcome, started: float) -> StageOutcome:
    if ctx.stage_logs is not None:
        metrics = ctx.store.client.get_run(outcome.run_id).data.metrics
        say(stage_line(outcome.stage, "cached" if outcome.cached else "reproduced", time.monotonic() - started,
                       metrics))
    return outcome


@task(name="save-experiment", cache_policy=NO_CACHE)
def save_experiment(ctx: RunContext) -> str | None:
    """Save this run's workspace as a DVC experiment named after the flow run (`dvc exp show` lists it with its
    params and metrics); returns its name, None where it could not be saved: outside a git repository with a
    commit, or when git refused (a lock left by a killed git command, say), which is said and does not fail the
    run (its models are registered and pushed already)."""
    name, logger = experiment_name(), get_run_logger()
    if not name or git_revision(ctx.root) == "unknown":
        logger.warning("not saved as a DVC experiment: %s is not in a git repository with a commit", ctx.root)
        return None
    try:
        ctx.dvc.save_experiment(name)
    except StageFailed as failed:
        logger.warning("not saved as a DVC experiment: %s", failed)
        return None
    _report(ctx, "save-experiment", f"saved as DVC experiment {name} (dvc exp show)")
    return name


def note_stale_outputs(ctx: RunContext) -> None:
    """Find whether the workspace holds outputs no stage declares (a dropped ratio's model), recorded where
    `chatgraft status` reads it at once, and say so when it does."""
    if note := stale_outputs_note(ctx.root):
        _report(ctx, "workspace", note)


def _not_a_failed_stage(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry a stage task that failed on a service (MLflow, the Prefect API), never one whose stage failed."""
    return not isinstance(state.result(raise_on_failure=False), StageFailed)


def with_retries(ctx: RunContext, tracked: Task) -> Task:
    """The task with the project's retry policy (`flow.retries`, `flow.retry_delay_seconds`)."""
    return tracked.with_options(retries=ctx.params.flow.retries,
                                retry_delay_seconds=ctx.params.flow.retry_delay_seconds)


def _stage_task(ctx: RunContext, stage: PipelineStage) -> Task:
    """The stage's Prefect task: retried on services, and, for a stage marked `meta: {gpu: true}` in dvc.yaml
    (training, merge, evaluation, align), holding a `gpu` slot by its tag (the limit across projects)."""
    return with_retries(ctx, _run_stage).with_options(tags=[GPU_TAG] if stage.gpu else [],
                                                      retry_condition_fn=_not_a_failed_stage)


@dataclass
class AnswersViews:
    """The answers views a run started (`flow.answers_view`), logged one after the other by the worker process."""

    worker: ViewWorker
    started: list[PrefectFuture] = field(default_factory=list)


def run_stages(ctx: RunContext, stages: list[PipelineStage], views: AnswersViews | None = None) -> list[StageOutcome]:
    """Every stage as a Prefect task. One slot: one after the other in the order given, each gpu stage waiting for
    a `gpu` slot first (saying who holds it). Several: each stage starts once the stages DVC's graph puts before it
    are done, so stages that do not depend on one another (merges, evaluations, align methods) run side by side,
    each on the device(s) it holds. With `views`, each stage that wrote answers then has its answers view started
    in the background (see `wait_for_answers_views`)."""
    needed = {stage.name: devices_needed(stage.name, ctx.params) if stage.gpu else 0 for stage in stages}
    for stage in stages:
        ctx.slots.check(stage.name, needed[stage.name])
    outcomes: dict[str, StageOutcome | PrefectFuture] = {}
    for stage in stages:
        if not ctx.slots.side_by_side:
            if stage.gpu:
                wait_for_gpu_slot(stage.name, ctx.params.flow.slot_wait_seconds, get_run_logger())
            outcomes[stage.name] = _stage_task(ctx, stage)(ctx, stage.name, needed[stage.name])
        else:
            upstream = [outcomes[name] for name in stage.after if name in outcomes]
            outcomes[stage.name] = _stage_task(ctx, stage).submit(ctx, stage.name, needed[stage.name],
                                                                  wait_for=upstream)
        samples = answer_files(stage.outs)
        if samples and views:  # one view at a time: each waits for the one before
            views.started.append(with_retries(ctx, log_answers_view).submit(
                ctx, views.worker, outcomes[stage.name], samples, wait_for=views.started[-1:]))
    return [outcome.result() if isinstance(outcome, PrefectFuture) else outcome  # a failed stage before its readers
            for outcome in outcomes.values()]


@task(name="answers-view", task_run_name="{outcome.stage}: answers view", cache_policy=NO_CACHE)
def log_answers_view(ctx: RunContext, worker: ViewWorker, outcome: StageOutcome, samples: list[Path]) -> None:
    """The candidate's answers and their scores into its run's evaluation view, by the worker process: MLflow takes
    about as long to log them into the embedded store as the stage took to write them, CPU the next stages share
    meanwhile. Nothing to do for a run an earlier flow logged."""
    if outcome.linked:
        return
    log = ctx.stage_logs / f"{outcome.stage.replace('@', '-')}.answers.log" if ctx.stage_logs else None
    worker.log(outcome.run_id, [ctx.root / path for path in samples], log)
    get_run_logger().info("%s: answers in the evaluation view of MLflow run %s", outcome.stage, outcome.run_id)


def wait_for_answers_views(ctx: RunContext, views: AnswersViews | None) -> None:
    """Wait for the answers views `run_stages` started, then stop their worker. One that failed is a warning, not
    the run's failure: the answers and scores are in the run's tables and metrics all the same."""
    if views is None:
        return
    failed = [f"answers view: {error}" for error in (view.result(raise_on_failure=False) for view in views.started)
              if isinstance(error, BaseException)]
    views.worker.close()
    for error in failed:
        get_run_logger().warning("%s", error)
    count = len(views.started)
    _report(ctx, "answers-view", f"{count - len(failed)} of {count} candidates' answers in MLflow's evaluation view")


def _input_hashes(ctx: RunContext) -> dict[str, str]:
    """`inputs/<group> -> md5` as dvc.lock recorded them: the content of what the run read from outside."""
    return {dep["path"]: dep["md5"] for entry in ctx.dvc.locked_stages().values() for dep in entry.get("deps", [])
            if dep["path"].startswith(f"{INPUTS}/") and "md5" in dep}


def _version_tags(ctx: RunContext, candidate: str, model_md5: str) -> dict[str, str]:
    upstream = read_upstream(ctx.layout.upstream)
    sources = {"base": upstream.base, "chat": upstream.chat, "cp": ctx.layout.cp_model}
    tags = {
        **lineage_tags(ctx.root, _input_hashes(ctx)),
        registry.MODEL_MD5_TAG: model_md5,
        "dvc_data_md5": ctx.dvc.output_hash("data/corpus") or "unknown",
        "candidate": candidate,
        registry.EVAL_FINGERPRINT_TAG: current_fingerprint(ctx, candidate),
        **{f"source.{role}": str(p.relative_to(ctx.root) if p.is_relative_to(ctx.root) else p)
           for role, p in sources.items()},
    }
    if candidate.startswith(MERGED_PREFIX):
        tags["merge_ratio"] = candidate.removeprefix(MERGED_PREFIX)
        tags["merge_embedding_rows"] = ctx.params.merge.embedding_rows
    if candidate.startswith(FINETUNED_PREFIX):  # CP -> FT -> + chat vector: the fine-tuning, then the merge
        method, tags["merge_ratio"] = finetuned_merged_parts(candidate)
        tags |= {"finetune_method": method, "merge_embedding_rows": ctx.params.merge.embedding_rows,
                 "source.finetuned": str(ctx.layout.finetuned_model(method).relative_to(ctx.root))}
    if candidate.startswith(ALIGNED_PREFIX):
        manifest = json.loads((candidate_dir(ctx.layout, candidate) / ALIGN_MANIFEST).read_text())
        tags |= {"align_method": manifest["method"], "aligned_from": manifest["from"]}
    return tags


def _input_example(ctx: RunContext) -> dict:
    """A chat request as the served model takes it: the instruction set's first question, eval's answer length."""
    (first,) = load_eval_set(ctx.root / (ctx.params.eval.sets.instruction or ctx.layout.corpus / EVAL), "reference",
                             limit=1)
    return {"messages": [turn.model_dump() for turn in first.messages], "max_tokens": ctx.params.eval.max_new_tokens}


def _register(ctx: RunContext, candidate: str, board: Leaderboard, leaderboard_md: str) -> str:
    """The version of `candidate`'s weights: registered now, or found (and its metrics brought up to date)."""
    model = ctx.params.promote.registered_model
    checkpoint = candidate_dir(ctx.layout, candidate)
    model_md5 = ctx.dvc.output_hash(str(checkpoint.relative_to(ctx.root))) or "unknown"
    version = registry.find_version(ctx.store, model, model_md5)
    made = version is None
    if made:
        tags = _version_tags(ctx, candidate, model_md5)
        with tracked_run(ctx.store, "register", tags, ctx.parent_run_id) as run_id:
            log_metrics(ctx.store, run_id, board.row(candidate).metrics)
            if (checkpoint / MODEL_CARD).exists():  # base and chat checkpoints may have none
                card = with_evaluation((checkpoint / MODEL_CARD).read_text(), board.row(candidate).metrics,
                                       f"Scored by the evaluate stages of DVC experiment {experiment_name()} on "
                                       "the held-out evaluation sets (`eval.sets`; rates are shares of answers).")
                log_text(ctx.store, run_id, card, "model_card.md")
            version = registry.register_model(ctx.store, run_id, model, checkpoint, tags, _input_example(ctx))
            registry.describe_version(ctx.store, model, version,
                                      version_markdown(version, board.row(candidate), leaderboard_md))
    elif (fingerprint := current_fingerprint(ctx, candidate)) != \
            registry.version_tags(ctx.store, model, version).get(registry.EVAL_FINGERPRINT_TAG):
        record_version_metrics(ctx, version, board.row(candidate).metrics, fingerprint)  # same weights, new data
    _report(ctx, "register", f"version {version}: {candidate} ({'registered now' if made else 'registered before'})")
    return version


@task(name="register", cache_policy=NO_CACHE)
def register_winner(ctx: RunContext, board: Leaderboard, leaderboard_md: str) -> str | None:
    """Register the best `promote.register_top_k` eligible merged or aligned models (once per weights hash); the
    winner's version becomes `challenger` and is returned."""
    repaired = registry.repair_versions(ctx.store, ctx.params.promote.registered_model)
    if repaired:
        get_run_logger().warning("versions left without lineage by a killed run, completed or marked incomplete: %s",
                                 repaired)
    eligible = [row.name for row in board.rows if row.eligible and row.name.startswith(COMPETING_PREFIXES)]
    if not eligible:
        get_run_logger().warning("no candidate met the guardrails: nothing registered")
        return None
    versions = [_register(ctx, name, board, leaderboard_md) for name in eligible[:ctx.params.promote.register_top_k]]
    registry.set_alias(ctx.store, ctx.params.promote.registered_model, registry.CHALLENGER, versions[0])
    _report(ctx, "register", f"challenger: version {versions[0]}")
    return versions[0]


@task(name="promote", cache_policy=NO_CACHE)
def promote_challenger(ctx: RunContext, version: str, board: Leaderboard, actor: str) -> Decision:
    """Apply the policy to the challenger, against the champion scored on the current evaluation data."""
    policy = ctx.params.promote
    if board.winner is None:
        raise ValueError("promote: the leaderboard names no winner to promote")
    held = registry.champion(ctx.store, policy.registered_model)
    if held is not None and held.version != version:
        champion_on_current_data(ctx, held, board.winner)  # the slow part, outside the promotion lock
    decision = apply_policy(ctx.store, policy, version, board.row(board.winner).metrics, actor,
                            refresh=lambda current: champion_on_current_data(ctx, current, board.winner),
                            wait_seconds=ctx.params.flow.slot_wait_seconds)
    _report(ctx, "promote", f"version {version} {'promoted to champion' if decision.promote else 'not promoted'}: "
                            f"{'; '.join(decision.reasons)}")
    return decision


@task(name="push", cache_policy=NO_CACHE)
def push_outputs(ctx: RunContext) -> None:
    """Push the DVC-tracked outputs to the default remote."""
    pushed = ctx.dvc.push().strip().splitlines()
    _report(ctx, "push", f"{pushed[-1] if pushed else 'nothing to push'} (dvc push)")


def _report(ctx: RunContext, task: str, outcome: str) -> None:
    """What a task did: in its run's log, and, on the quiet console of `chatgraft run`, as the task's one line."""
    get_run_logger().info(outcome)
    if ctx.stage_logs is not None:
        say(task_line(task, outcome))


def read_leaderboard(ctx: RunContext) -> Leaderboard:
    """The leaderboard the last stage wrote."""
    return Leaderboard.read(ctx.layout.leaderboard_report)
