"""A fair comparison: the champion's metrics measured on the same evaluation data as the challenger's."""
from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.context import RunContext
from flows.lineage import lineage_tags
from flows.slots import GPU_TAG, wait_for_gpu_slot
from flows.tracking import registry
from flows.tracking.stage_runs import log_metrics, tracked_run
from pipelines.evaluate.fingerprint import evaluation_fingerprint
from pipelines.promotion import Champion
from pipelines.upstream.manifest import read_upstream


def current_fingerprint(ctx: RunContext) -> str:
    """The fingerprint of the evaluation data and params in the project now."""
    return evaluation_fingerprint(ctx.params.eval, ctx.layout.corpus)


def champion_on_current_data(ctx: RunContext, held: Champion) -> Champion:
    """`held` unchanged when it was evaluated on the current data; otherwise its registered weights are scored
    again, the metrics logged to a run of their own, and the version's tags point at that run."""
    model = ctx.params.promote.registered_model
    fingerprint = current_fingerprint(ctx)
    if registry.version_tags(ctx.store, model, held.version).get(registry.EVAL_FINGERPRINT_TAG) == fingerprint:
        return held
    logger = get_run_logger()
    logger.info("evaluation data changed since version %s was scored: re-evaluating it", held.version)
    wait_for_gpu_slot(f"re-evaluating v{held.version}", ctx.params.flow.slot_wait_seconds, logger)
    metrics = _score_again(ctx, held.version)
    record_version_metrics(ctx, held.version, metrics)
    return Champion(held.version, metrics, held.pinned)


@task(name="re-evaluate", task_run_name="re-evaluate v{version}", cache_policy=NO_CACHE, tags=[GPU_TAG])
def _score_again(ctx: RunContext, version: str) -> dict[str, float]:
    """A registered version's scores on the current data: the evaluate stages' suites, holding a `gpu` slot (by
    its tag) like the other model stages, since it loads the model on the accelerator when there is one."""
    from pipelines.evaluate.stage import evaluate_candidate  # torch and transformers: only when re-evaluating

    with tempfile.TemporaryDirectory(prefix="champion-") as tmp:
        checkpoint = registry.download_checkpoint(ctx.store, ctx.params.promote.registered_model, version,
                                                  Path(tmp) / "model")
        result = evaluate_candidate(model_dir=checkpoint, chat_dir=read_upstream(ctx.layout.upstream).chat,
                                    corpus_dir=ctx.layout.corpus, params=ctx.params.eval,
                                    metrics_path=Path(tmp) / "metrics.json", samples_path=Path(tmp) / "samples.jsonl")
    return result.metrics


def record_version_metrics(ctx: RunContext, version: str, metrics: dict[str, float]) -> None:
    """Log a version's metrics on the current data to a run of their own; the version's tags point at it."""
    fingerprint = current_fingerprint(ctx)
    tags = {"model_version": version, registry.EVAL_FINGERPRINT_TAG: fingerprint, **lineage_tags(ctx.root)}
    with tracked_run(ctx.store, f"re-evaluate v{version}", tags, ctx.parent_run_id) as run_id:
        log_metrics(ctx.store, run_id, metrics)
    registry.set_version_tags(ctx.store, ctx.params.promote.registered_model, version,
                              {registry.EVAL_FINGERPRINT_TAG: fingerprint, registry.EVAL_RUN_TAG: run_id})
