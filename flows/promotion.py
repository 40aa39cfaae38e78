"""Moving `champion`, one move at a time: the policy's automatic moves and a person's promote, pin and rollback.

Every move holds the registry's promotion lock (`flows.promotion_lock`: a file beside a local store, Prefect's global
concurrency limit `chatgraft-promotion` for a registry on a server) and re-reads the champion inside it, so two flows
finishing together can never both crown their winner from the same stale view. A move waits for the lock at most
`wait_seconds` (flow.slot_wait_seconds), logging that it waits.

Moves made outside chatgraft (the MLflow UI) are heard by `chatgraft watch` and recorded under the same lock; under
`promote.ui_moves: guard` one that breaks a guardrail or leaves a pinned champion is undone.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

from flows.promotion_lock import promotion_lock
from flows.tracking import history, registry
from flows.tracking.store import Store
from pipelines.config import FlowParams, PromoteParams
from pipelines.promotion import Champion, Decision, decide_promotion, guardrail_violations


class PromotionError(RuntimeError):
    """A requested move cannot be made; the message says why."""


LOGGER = logging.getLogger("chatgraft.promotion")
WAIT_SECONDS = FlowParams().slot_wait_seconds
SETTLE_SECONDS = 10.0  # how long a move waits for `chatgraft watch` to record a UI move it finds unrecorded
UI_ACTOR = "MLflow UI"
GUARD_ACTOR = "chatgraft watch (promote.ui_moves: guard)"


@contextmanager
def settled_lock(store: Store, model: str, actor: str, wait_seconds: float) -> Iterator[None]:
    """The promotion lock, held while the history agrees with `champion`: a UI move not yet recorded gets up to
    SETTLE_SECONDS for `chatgraft watch` to record it (so every move keeps its own entry, in order; the wait does
    not hold the lock the watcher needs), then is recorded here as a move found afterwards."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        while not _settled(store, model) and time.monotonic() < deadline:
            time.sleep(0.5)
        with promotion_lock(store.uri, wait_seconds, LOGGER):
            if time.monotonic() >= deadline:
                registry.complete_champion_audit(store, model, actor)
            if time.monotonic() >= deadline or _settled(store, model):
                yield
                return
        LOGGER.info("champion moved outside chatgraft; waiting for `chatgraft watch` to record it")


def _settled(store: Store, model: str) -> bool:
    return (registry.alias_holder(store, model, registry.CHAMPION) or "none") == history.recorded_champion(store, model)


def apply_policy(store: Store, policy: PromoteParams, version: str, metrics: dict[str, float], actor: str,
                 refresh: Callable[[Champion], Champion] = lambda held: held,
                 wait_seconds: float = WAIT_SECONDS) -> Decision:
    """Move `champion` to `version` when the policy says so, and record the decision on the version.

    `refresh` brings the champion's metrics up to date with the current evaluation data (it is called inside
    the lock, so it should be cheap by then: call it once before, too).
    """
    model = policy.registered_model
    with settled_lock(store, model, actor, wait_seconds):
        current = registry.champion(store, model)
        if current is not None and current.version == version:
            return Decision(False, [f"version {version} already is the champion"])
        if current is not None:
            current = refresh(current)
        decision = decide_promotion(metrics, current, policy)
        previous = current.version if current else None
        if decision.promote:
            registry.set_alias(store, model, registry.CHAMPION, version)
        registry.record_decision(store, model, version, "promoted" if decision.promote else "not promoted",
                                 decision.reasons, actor, previous, (previous or "none") if decision.promote else None)
    return decision


def promote_by_hand(store: Store, model: str, version: str, actor: str, reason: str,
                    wait_seconds: float = WAIT_SECONDS) -> str | None:
    """A person makes `version` champion (pinned or not); returns the previous champion."""
    with settled_lock(store, model, actor, wait_seconds):
        if registry.version_tags(store, model, version).get(registry.INCOMPLETE_TAG) == "true":  # fails if absent
            raise PromotionError(f"version {version} of {model} was registered by a run that was killed before its "
                                 "lineage was recorded; register the model again")
        previous = registry.alias_holder(store, model, registry.CHAMPION)
        if previous == version:
            raise PromotionError(f"version {version} of {model} already is the champion")
        registry.set_alias(store, model, registry.CHAMPION, version)
        registry.record_decision(store, model, version, "promoted by hand", [reason], actor, previous,
                                 previous or "none")
    return previous


def rollback(store: Store, model: str, actor: str, wait_seconds: float = WAIT_SECONDS) -> tuple[str, str]:
    """Give `champion` back to the version that held it before the current one; returns (from, to)."""
    with settled_lock(store, model, actor, wait_seconds):
        current = registry.alias_holder(store, model, registry.CHAMPION)
        if current is None:
            raise PromotionError(f"{model} has no champion to roll back")
        target = registry.version_tags(store, model, current).get("promotion.rollback_to", "none")
        if target == "none":
            raise PromotionError(f"version {current} of {model} has no earlier champion recorded to roll back to")
        registry.set_alias(store, model, registry.CHAMPION, target)
        # the target's own way back stays what it was: rolling back twice walks further back, not in a circle
        registry.record_decision(store, model, target, "rolled back to", [f"rolled back from version {current}"],
                                 actor, current)
    return current, target


def set_pinned(store: Store, model: str, version: str, pinned: bool) -> None:
    """Pin (or unpin) a version: a pinned champion is never moved by the policy."""
    registry.version_tags(store, model, version)
    registry.set_version_tags(store, model, version, {registry.PINNED_TAG: str(pinned).lower()})


def hear_outside_move(store: Store, policy: PromoteParams, version: str | None, mode: Literal["audit", "guard"],
                      wait_seconds: float = WAIT_SECONDS) -> str:
    """Record a move of `champion` made outside chatgraft (in the MLflow UI) to `version` (None: the alias was
    removed); under `guard`, undo it when the version breaks a guardrail of the policy or the champion it replaced
    is pinned. Returns what was done, in words."""
    model, target = policy.registered_model, version or "none"
    with promotion_lock(store.uri, wait_seconds, LOGGER):
        recorded = history.recorded_champion(store, model)
        holder = registry.alias_holder(store, model, registry.CHAMPION) or "none"
        if target == recorded:
            return f"champion -> {target}: already recorded"
        # a move already replaced by another: recorded unless that one is already recorded (it was delivered first:
        # two moves within milliseconds are recorded as the later one, never out of order)
        if target != holder and (holder == recorded or history.left_unrecorded(store, model, target)):
            return f"champion -> {target}: already replaced by a recorded move to {holder}"
        if version is None:
            registry.record_decision(store, model, recorded, history.UI_REMOVAL, ["alias removed in the MLflow UI"],
                                     UI_ACTOR, recorded, to_version="none")
        else:
            registry.record_decision(store, model, version, history.UI_MOVE, ["alias set in the MLflow UI"], UI_ACTOR,
                                     None if recorded == "none" else recorded, rollback_to=recorded)
        problems = _guard_problems(store, policy, version, recorded) if mode == "guard" and target == holder else []
        if not problems:
            return f"champion {recorded} -> {target}: recorded"
        _restore(store, model, recorded)
        registry.record_decision(store, model, recorded if version is None else version, history.REVERTED, problems,
                                 GUARD_ACTOR, target, to_version=recorded)
        return f"champion {recorded} -> {target}: reverted to {recorded} ({'; '.join(problems)})"


def _guard_problems(store: Store, policy: PromoteParams, version: str | None, replaced: str) -> list[str]:
    model = policy.registered_model
    problems = []
    if replaced != "none" and registry.version_standing(store, model, replaced).pinned:
        problems.append(f"champion version {replaced} is pinned: unpin it (`chatgraft pin {replaced} --off`, or its "
                        "tag `pinned` in the UI) before moving champion")
    if version is not None:
        if registry.version_tags(store, model, version).get(registry.INCOMPLETE_TAG) == "true":
            problems.append(f"version {version} was registered by a killed run and has no lineage")
        metrics = registry.version_standing(store, model, version).metrics
        problems += [f"guardrail: {v}" for v in guardrail_violations(metrics, policy.guardrails)]
    return problems


def _restore(store: Store, model: str, version: str) -> None:
    if version == "none":
        registry.remove_alias(store, model, registry.CHAMPION)
    else:
        registry.set_alias(store, model, registry.CHAMPION, version)
