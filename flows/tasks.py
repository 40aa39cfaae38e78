"""Prefect tasks of the retrain flow: a DVC stage as a tracked run, registration, promotion, push."""
from __future__ import annotations

import json
from dataclasses import dataclass

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.context import RunContext
from flows.lineage import lineage_tags
from flows.tracking import registry
from flows.tracking.stage_runs import end_run, log_metrics, log_stage_outputs, set_tags, start_run
from pipelines.evaluate import MERGED_PREFIX, candidate_dir
from pipelines.promotion import Decision, decide_promotion
from pipelines.upstream import read_upstream


@dataclass(frozen=True)
class StageOutcome:
    """A stage's MLflow run and whether DVC skipped it."""

    stage: str
    run_id: str
    cached: bool


@task(name="stage", task_run_name="{stage}", cache_policy=NO_CACHE)
def run_stage(ctx: RunContext, stage: str) -> StageOutcome:
    """Reproduce one DVC stage (skipped when up to date) and log its files to a nested MLflow run."""
    cached = ctx.dvc.is_up_to_date(stage)
    run_id = start_run(ctx.store, stage, {"stage": stage, "cached": str(cached).lower()}, ctx.parent_run_id)
    try:
        if not cached:
            ctx.dvc.reproduce(stage, env={"MLFLOW_TRACKING_URI": ctx.store.uri, "MLFLOW_RUN_ID": run_id})
        log_stage_outputs(ctx.store, run_id, ctx.root, ctx.dvc.spec(stage), ctx.raw_params)
        set_tags(ctx.store, run_id, lineage_tags(ctx.root, ctx.dvc.lock_hashes(stage)))
    except BaseException:
        end_run(ctx.store, run_id, ok=False)
        raise
    end_run(ctx.store, run_id)
    get_run_logger().info("%s: %s", stage, "up to date, logged from its files" if cached else "reproduced")
    return StageOutcome(stage, run_id, cached)


def _version_tags(ctx: RunContext, winner: str, model_md5: str) -> dict[str, str]:
    upstream = read_upstream(ctx.layout.upstream)
    sources = {"base": upstream.base, "chat": upstream.chat, "cp": ctx.layout.cp_model}
    tags = {
        **lineage_tags(ctx.root),
        registry.MODEL_MD5_TAG: model_md5,
        "dvc_data_md5": ctx.dvc.output_hash("data/corpus") or "unknown",
        "candidate": winner,
        **{f"source.{role}": str(p.relative_to(ctx.root) if p.is_relative_to(ctx.root) else p)
           for role, p in sources.items()},
    }
    if winner.startswith(MERGED_PREFIX):
        tags["merge_ratio"] = winner.removeprefix(MERGED_PREFIX)
        tags["merge_embedding_rows"] = ctx.params.merge.embedding_rows
    return tags


@task(name="register", cache_policy=NO_CACHE)
def register_winner(ctx: RunContext, board: dict, leaderboard_md: str) -> str | None:
    """Register the leaderboard's winner (once per weights hash) and point `challenger` at it."""
    winner = board["winner"]
    if winner is None:
        get_run_logger().warning("no candidate met the guardrails: nothing registered")
        return None
    model = ctx.params.promote.registered_model
    checkpoint = candidate_dir(ctx.layout, winner)
    model_md5 = ctx.dvc.output_hash(str(checkpoint.relative_to(ctx.root))) or "unknown"
    version = registry.find_version(ctx.store, model, model_md5)
    if version is None:
        tags = _version_tags(ctx, winner, model_md5)
        run_id = start_run(ctx.store, "register", {**tags, "candidate": winner}, ctx.parent_run_id)
        log_metrics(ctx.store, run_id, board["candidates"][winner])
        version = registry.register_model(ctx.store, run_id, model, checkpoint, tags, leaderboard_md)
        end_run(ctx.store, run_id)
    registry.set_alias(ctx.store, model, registry.CHALLENGER, version)
    get_run_logger().info("%s is version %s of %s (challenger)", winner, version, model)
    return version


@task(name="promote", cache_policy=NO_CACHE)
def promote_challenger(ctx: RunContext, version: str, board: dict, actor: str) -> Decision:
    """Move `champion` to the challenger when the policy says so; record the decision on the version."""
    model, policy = ctx.params.promote.registered_model, ctx.params.promote
    current = registry.champion(ctx.store, model)
    if current is not None and current.version == version:
        return Decision(False, [f"version {version} already is the champion"])
    challenger = {k: v for k, v in board["candidates"][board["winner"]].items() if isinstance(v, float)}
    decision = decide_promotion(challenger, current.metrics if current else None, policy)
    if decision.promote:
        registry.set_alias(ctx.store, model, registry.CHAMPION, version)
    registry.record_decision(ctx.store, model, version, decision.promote, decision.reasons, actor,
                             current.version if current else None)
    get_run_logger().info("version %s %s: %s", version, "promoted" if decision.promote else "not promoted",
                          "; ".join(decision.reasons))
    return decision


@task(name="push", cache_policy=NO_CACHE)
def push_outputs(ctx: RunContext) -> None:
    """Push the DVC-tracked outputs to the default remote."""
    get_run_logger().info(ctx.dvc.push().strip() or "dvc push: nothing to push")


def read_leaderboard(ctx: RunContext) -> dict:
    """The leaderboard the last stage wrote."""
    return json.loads(ctx.layout.leaderboard.read_text())
