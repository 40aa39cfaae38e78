"""The promotion policy as pure functions over metric dicts: rank candidates, decide whether one becomes champion."""
from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.config import Bound, PromoteParams


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


def decide_promotion(challenger: dict[str, float], champion: dict[str, float] | None,
                     policy: PromoteParams) -> Decision:
    """Promote when the challenger meets every guardrail and beats the champion (if any) by more than the margin."""
    violations = guardrail_violations(challenger, policy.guardrails)
    if violations:
        return Decision(False, [f"guardrail: {v}" for v in violations])
    if champion is None:
        return Decision(True, ["no champion yet", "all guardrails met"])
    gain = _score(challenger, policy) - _score(champion, policy)
    metric = policy.primary_metric
    comparison = (f"{metric} {challenger[metric]:.4g} vs champion {champion.get(metric, float('nan')):.4g} "
                  f"(gain {gain:+.4g}, margin {policy.min_margin:g})")
    # A gain equal to the margin (up to float noise) is not a win.
    return Decision(gain > policy.min_margin + 1e-9, [comparison, "all guardrails met"])
