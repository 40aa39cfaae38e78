"""The promotion policy as pure functions over metric dicts: rank candidates, decide whether one becomes champion."""
from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.config import Bound, PromoteParams, RatioBound


@dataclass(frozen=True)
class Ranked:
    """A candidate's place on the leaderboard."""

    name: str
    metrics: dict[str, float]
    violations: list[str] = field(default_factory=list)

    @property
    def eligible(self) -> bool:
        return not self.violations


@dataclass(frozen=True)
class Champion:
    """The version holding `champion`: the metrics it is compared on, and whether a person pinned it."""

    version: str
    metrics: dict[str, float]
    pinned: bool = False


@dataclass(frozen=True)
class Decision:
    """Whether the challenger becomes champion, and why."""

    promote: bool
    reasons: list[str]


def guardrail_violations(metrics: dict[str, float], guardrails: dict[str, Bound]) -> list[str]:
    """Each bound the metrics break, in words; a missing metric breaks its bound."""
    violations = []
    for metric, bound in guardrails.items():
        value = metrics.get(metric)
        if value is None:
            violations.append(f"{metric} missing")
        elif bound.min is not None and value < bound.min:
            violations.append(f"{metric} {value:.4g} < min {bound.min:g}")
        elif bound.max is not None and value > bound.max:
            violations.append(f"{metric} {value:.4g} > max {bound.max:g}")
    return violations


def champion_guardrail_violations(challenger: dict[str, float], champion: dict[str, float],
                                  guardrails: dict[str, RatioBound]) -> list[str]:
    """Each bound relative to the champion's value the challenger breaks; a metric either lacks breaks it."""
    violations = []
    for metric, bound in guardrails.items():
        value, reference = challenger.get(metric), champion.get(metric)
        if value is None or reference is None:
            violations.append(f"{metric} missing on the {'challenger' if value is None else 'champion'}")
        elif bound.min_ratio is not None and value < bound.min_ratio * reference:
            violations.append(f"{metric} {value:.4g} < {bound.min_ratio:g} x champion's {reference:.4g}")
        elif bound.max_ratio is not None and value > bound.max_ratio * reference:
            violations.append(f"{metric} {value:.4g} > {bound.max_ratio:g} x champion's {reference:.4g}")
    return violations


def _score(metrics: dict[str, float], policy: PromoteParams) -> float:
    value = metrics.get(policy.primary_metric, float("nan"))
    return value if policy.higher_is_better else -value


def rank_candidates(metrics_by_name: dict[str, dict[str, float]], policy: PromoteParams) -> list[Ranked]:
    """Eligible candidates first, then by the primary metric in its direction; ties keep the given order."""
    for name, metrics in metrics_by_name.items():
        if policy.primary_metric not in metrics:
            raise KeyError(f"candidate {name!r} has no metric {policy.primary_metric!r} (promote.primary_metric)")
    ranked = [Ranked(n, m, guardrail_violations(m, policy.guardrails)) for n, m in metrics_by_name.items()]
    return sorted(ranked, key=lambda r: (not r.eligible, -_score(r.metrics, policy)))


def decide_promotion(challenger: dict[str, float], champion: Champion | None, policy: PromoteParams) -> Decision:
    """Promote when the challenger meets every guardrail and, if there is a champion, the champion is not pinned,
    the challenger meets the bounds relative to it and beats it by more than the margin."""
    violations = guardrail_violations(challenger, policy.guardrails)
    if violations:
        return Decision(False, [f"guardrail: {v}" for v in violations])
    if champion is None:
        return Decision(True, ["no champion yet", "all guardrails met"])
    if champion.pinned:
        return Decision(False, [f"champion version {champion.version} is pinned: only a person moves it"])
    relative = champion_guardrail_violations(challenger, champion.metrics, policy.champion_guardrails)
    if relative:
        return Decision(False, [f"champion guardrail: {v}" for v in relative])
    gain = _score(challenger, policy) - _score(champion.metrics, policy)
    metric = policy.primary_metric
    comparison = (f"{metric} {challenger[metric]:.4g} vs champion version {champion.version} "
                  f"{champion.metrics.get(metric, float('nan')):.4g} (gain {gain:+.4g}, margin {policy.min_margin:g})")
    # A gain equal to the margin (up to float noise) is not a win.
    return Decision(gain > policy.min_margin + 1e-9, [comparison, "all guardrails met"])
