"""The `retrain` flow: the DESIGN diagram, top to bottom.

intake -> import-documents -> link-inputs -> inputs -> corpus -> upstream -> cp -> merge@ratio -> evaluate* -> curate
       -> pick -> align@method -> evaluate-aligned@method -> leaderboard -> register -> promote -> push -> save-experiment
"""
from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.console import LOGS
from flows.context import RunContext, open_project, require_usable_inputs
from flows.leaderboard_view import leaderboard_markdown, promotion_markdown
from flows.inbox import INTAKE_STAGE
from flows.lineage import lineage_tags, log_environment
from flows.recovery import fail_abandoned_runs, recover_crashed_runs, remove_staging_left_behind, tag_workspace
from flows.slots import ensure_concurrency_limits
from flows.tasks import (
    AnswersViews, import_documents, link_inputs, note_stale_outputs, promote_challenger, push_outputs,
    read_leaderboard, register_winner, run_stages, save_experiment, take_new_data, wait_for_answers_views, with_retries,
)
from flows.tracking.answers import ViewWorker
from flows.tracking.stage_runs import describe_stages, log_text, tracked_run
from flows.workspace import workspace_id, workspace_lock

@dataclass(frozen=True)
class RetrainResult:
    """What a retrain run decided."""

    winner: str | None
    version: str | None
    promoted: bool
    reasons: list[str]
    reproduced: list[str]
    leaderboard: str
    new_files: list[str]


@flow(name="retrain", log_prints=True)
def retrain(project_dir: str = ".", wait_for_workspace: bool = True, stage_logs: bool = False,
            workspace_held: bool = False) -> RetrainResult:
    """Reproduce every stage through DVC, track each in MLflow, register the winner and apply the promotion policy.

    One run per project at a time: another waits (`flow.workspace_wait_seconds`), or refuses at once when
    `wait_for_workspace` is false; the run that gets the project first closes what killed runs left open.
    `workspace_held`: the calling process holds the project already (`chatgraft run` takes it before it starts
    Prefect), and the flow run is only named as its holder.
    With `stage_logs`, each stage's output goes to .chatgraft/logs/<flow run>/<stage>.log (and its MLflow run)
    instead of the terminal, which gets one line a stage.
    """
    ctx = open_project(Path(project_dir))
    if stage_logs:
        ctx = replace(ctx, stage_logs=ctx.root / LOGS / str(flow_run.name or "local"))
    require_usable_inputs(ctx.params, ctx.root)
    logger = get_run_logger()
    wait = ctx.params.flow.workspace_wait_seconds if wait_for_workspace else 0.0
    with workspace_lock(ctx.root, f"flow run {flow_run.name} ({flow_run.id})", wait, logger.info, held=workspace_held):
        workspace, current = workspace_id(ctx.root), UUID(str(flow_run.id))
        tag_workspace(current, workspace)
        recovery = recover_crashed_runs(ctx.store, workspace, current, flow_run.name)
        recovery.staging = remove_staging_left_behind(ctx.root, ctx.dvc.declared_outputs())
        if recovery:
            logger.warning("closed what killed runs left: %s", recovery.summary())
        ensure_concurrency_limits(ctx.params.flow.slot_count)
        return _run_pipeline(ctx)


def _close_abandoned_runs(ctx: RunContext) -> None:
    found_by = f"flow run {flow_run.name} ({flow_run.id}), at its end"
    abandoned = fail_abandoned_runs(ctx.store, UUID(str(flow_run.id)), ctx.parent_run_id or "", found_by)
    if abandoned:
        get_run_logger().warning("MLflow runs left open by retried tasks, marked FAILED: %s", ", ".join(abandoned))


def _run_pipeline(ctx: RunContext) -> RetrainResult:
    """The stages of dvc.yaml in its order, each a tracked task; then register, promote, push."""
    with tracked_run(ctx.store, f"retrain-{flow_run.name or 'local'}", lineage_tags(ctx.root)) as parent_run_id:
        ctx = replace(ctx, parent_run_id=parent_run_id)
        log_environment(ctx.store, parent_run_id)
        views = AnswersViews(ViewWorker(ctx.store.uri)) if ctx.params.flow.answers_view else None
        try:
            intake = take_new_data(ctx)  # records the inbox stage's output itself
            import_documents(ctx)
            link_inputs(ctx)
            outcomes = run_stages(ctx, [stage for stage in ctx.dvc.stages() if stage.name != INTAKE_STAGE], views)
            describe_stages(ctx.store, parent_run_id, [(o.stage, not o.cached, o.run_id) for o in outcomes])

            board = read_leaderboard(ctx)
            version = with_retries(ctx, register_winner)(ctx, board, leaderboard_markdown(board))
            actor = f"retrain flow run {flow_run.id}"
            decision = with_retries(ctx, promote_challenger)(ctx, version, board, actor) if version else None
            with_retries(ctx, push_outputs)(ctx)
            save_experiment(ctx)
            note_stale_outputs(ctx)
            wait_for_answers_views(ctx, views)
        except BaseException:
            with suppress(Exception):  # MLflow may be what failed: then the next run's recovery closes them
                wait_for_answers_views(ctx, views)
                _close_abandoned_runs(ctx)
            raise
        _close_abandoned_runs(ctx)
        summary = (f"version {version}: {'promoted to champion' if decision.promote else 'not promoted'} "
                   f"({'; '.join(decision.reasons)})") if decision else "nothing registered"
        markdown = leaderboard_markdown(board, summary)
        create_markdown_artifact(markdown, key="leaderboard", description="retrain leaderboard")
        create_markdown_artifact(promotion_markdown(version, decision), key="promotion",
                                 description="why the challenger was or was not promoted")
        log_text(ctx.store, parent_run_id, markdown, "leaderboard.md")
    return RetrainResult(board.winner, version, bool(decision and decision.promote),
                         decision.reasons if decision else [], [o.stage for o in outcomes if not o.cached], markdown,
                         intake.taken)
