"""The promotion policy: guardrails, ranking, margin over the champion."""
import pytest

from pipelines.config import Bound, PromoteParams
from pipelines.promotion import decide_promotion, guardrail_violations, rank_candidates

POLICY = PromoteParams(primary_metric="answer_accuracy", min_margin=0.05, guardrails={
    "termination_rate": Bound(min=0.9), "repetition_rate": Bound(max=0.1)})
GOOD = {"answer_accuracy": 0.8, "termination_rate": 1.0, "repetition_rate": 0.0}


def test_guardrail_violations_are_spelled_out() -> None:
    assert guardrail_violations(GOOD, POLICY.guardrails) == []
    bad = {"answer_accuracy": 0.9, "termination_rate": 0.5}
    assert guardrail_violations(bad, POLICY.guardrails) == ["termination_rate 0.5 < min 0.9", "repetition_rate missing"]


def test_ranking_puts_eligible_first_then_primary_metric() -> None:
    ranked = rank_candidates({
        "cp": {"answer_accuracy": 0.95, "termination_rate": 0.0, "repetition_rate": 0.3},
        "merged-0.5": {**GOOD, "answer_accuracy": 0.6},
        "merged-1.0": GOOD,
    }, POLICY)
    assert [r.name for r in ranked] == ["merged-1.0", "merged-0.5", "cp"]
    assert not ranked[-1].eligible


def test_lower_is_better_direction() -> None:
    policy = PromoteParams(primary_metric="target_perplexity", higher_is_better=False)
    ranked = rank_candidates({"a": {"target_perplexity": 5.0}, "b": {"target_perplexity": 2.0}}, policy)
    assert [r.name for r in ranked] == ["b", "a"]


def test_missing_primary_metric_is_named() -> None:
    with pytest.raises(KeyError, match="candidate 'x' has no metric 'answer_accuracy'"):
        rank_candidates({"x": {"termination_rate": 1.0}}, POLICY)


def test_first_model_becomes_champion_when_it_meets_guardrails() -> None:
    assert decide_promotion(GOOD, None, POLICY).promote
    assert not decide_promotion({**GOOD, "termination_rate": 0.1}, None, POLICY).promote


@pytest.mark.parametrize("champion_accuracy, promote", [(0.7, True), (0.75, False), (0.8, False), (0.9, False)])
def test_challenger_must_beat_champion_by_more_than_the_margin(champion_accuracy: float, promote: bool) -> None:
    decision = decide_promotion(GOOD, {**GOOD, "answer_accuracy": champion_accuracy}, POLICY)
    assert decision.promote is promote
    assert "margin 0.05" in decision.reasons[0]
