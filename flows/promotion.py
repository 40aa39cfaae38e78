"""Moving `champion`, one move at a time: the policy's automatic moves and a person's promote, pin and rollback.

Every move holds the Prefect global concurrency limit `chatgraft-promotion` (one slot) and re-reads the champion
inside it, so two flows finishing together can never both crown their winner from the same stale view. A move
waits for the lock at most `wait_seconds` (flow.slot_wait_seconds), logging that it waits.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from flows.slots import promotion_lock
from flows.tracking import registry
from flows.tracking.store import Store
from pipelines.config import FlowParams, PromoteParams
from pipelines.promotion import Champion, Decision, decide_promotion


class PromotionError(RuntimeError):
    """A requested move cannot be made; the message says why."""


LOGGER = logging.getLogger("chatgraft.promotion")
WAIT_SECONDS = FlowParams().slot_wait_seconds


def apply_policy(store: Store, policy: PromoteParams, version: str, metrics: dict[str, float], actor: str,
                 refresh: Callable[[Champion], Champion] = lambda held: held,
                 wait_seconds: float = WAIT_SECONDS) -> Decision:
    """Move `champion` to `version` when the policy says so, and record the decision on the version.

    `refresh` brings the champion's metrics up to date with the current evaluation data (it is called inside
    the lock, so it should be cheap by then: call it once before, too).
    """
    model = policy.registered_model
    with promotion_lock(wait_seconds, LOGGER):
        registry.complete_champion_audit(store, model, actor)
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
    with promotion_lock(wait_seconds, LOGGER):
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
    with promotion_lock(wait_seconds, LOGGER):
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
