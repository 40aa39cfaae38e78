"""A fair comparison: the champion's metrics measured on the same evaluation data as the challenger's.

What an evaluation was measured on is read from dvc.lock, never resolved a second time: the deps every evaluate
stage shares (the scoring code, the corpus's held-out text and sets, the user's eval sets under inputs/eval, the
chat model whose template and end-of-turn ids frame every answer) with the md5s DVC recorded, and the eval params.
DVC reruns an evaluation when any of them changes, so a fingerprint always belongs with the scores beside it.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.context import RunContext
from flows.lineage import lineage_tags
from flows.slots import GPU_TAG, wait_for_gpu_slot
from flows.tracking import registry
from flows.tracking.stage_runs import log_metrics, tracked_run
from pipelines.promotion import Champion
from pipelines.upstream.manifest import read_upstream

EVALUATE_COMMAND = "python -m pipelines evaluate "  # dvc.yaml's evaluate stages: this, then the candidate's name


def evaluation_fingerprint(locked: dict[str, dict], candidate: str) -> str:
    """sha256 of what dvc.lock (`locked`, its stages) recorded for `candidate`'s evaluation besides the candidate
    itself: the deps shared by every evaluate stage, with their md5s, and the stage's params."""
    evaluations = {entry["cmd"].removeprefix(EVALUATE_COMMAND): entry for entry in locked.values()
                   if str(entry.get("cmd", "")).startswith(EVALUATE_COMMAND)}
    if candidate not in evaluations:
        raise ValueError(f"dvc.lock records no evaluation of {candidate}: its evaluate stage has not run")
    shared = set.intersection(*({dep["path"] for dep in entry.get("deps", [])} for entry in evaluations.values()))
    entry = evaluations[candidate]
    record = {"deps": sorted([dep["path"], dep.get("md5")] for dep in entry["deps"] if dep["path"] in shared),
              "params": entry.get("params", {})}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def current_fingerprint(ctx: RunContext, candidate: str) -> str:
    """The fingerprint of `candidate`'s evaluation as dvc.lock records it now."""
    return evaluation_fingerprint(ctx.dvc.locked_stages(), candidate)


def champion_on_current_data(ctx: RunContext, held: Champion, challenger: str) -> Champion:
    """`held` unchanged when it was evaluated on the data `challenger` (a candidate's name) was; otherwise its
    registered weights are scored again, the metrics logged to a run of their own, and the version's tags point at
    that run."""
    model = ctx.params.promote.registered_model
    fingerprint = current_fingerprint(ctx, challenger)
    if registry.version_tags(ctx.store, model, held.version).get(registry.EVAL_FINGERPRINT_TAG) == fingerprint:
        return held
    logger = get_run_logger()
    logger.info("evaluation data changed since version %s was scored: re-evaluating it", held.version)
    wait_for_gpu_slot(f"re-evaluating v{held.version}", ctx.params.flow.slot_wait_seconds, logger)
    metrics = _score_again(ctx, held.version)
    record_version_metrics(ctx, held.version, metrics, fingerprint)
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


def record_version_metrics(ctx: RunContext, version: str, metrics: dict[str, float], fingerprint: str) -> None:
    """Log a version's metrics, measured on the data `fingerprint` names, to a run of their own; the version's
    tags point at it."""
    tags = {"model_version": version, registry.EVAL_FINGERPRINT_TAG: fingerprint, **lineage_tags(ctx.root)}
    with tracked_run(ctx.store, f"re-evaluate v{version}", tags, ctx.parent_run_id) as run_id:
        log_metrics(ctx.store, run_id, metrics)
    registry.set_version_tags(ctx.store, ctx.params.promote.registered_model, version,
                              {registry.EVAL_FINGERPRINT_TAG: fingerprint, registry.EVAL_RUN_TAG: run_id})
