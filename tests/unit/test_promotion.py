"""The promotion policy: guardrails, ranking, margin over the champion."""
import pytest

from pipelines.config import Bound, PromoteParams, RatioBound
from pipelines.promotion import Champion, decide_promotion, guardrail_violations, rank_candidates

POLICY = PromoteParams(primary_metric="answer_accuracy", min_margin=0.05, guardrails={
    "termination_rate": Bound(min=0.9), "repetition_rate": Bound(max=0.1)},
    champion_guardrails={"target_perplexity": RatioBound(max_ratio=1.1)})
GOOD = {"answer_accuracy": 0.8, "termination_rate": 1.0, "repetition_rate": 0.0, "target_perplexity": 3.0}


def champion(**changes: float) -> Champion:
    return Champion("7", {**GOOD, **changes})


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
    decision = decide_promotion(GOOD, champion(answer_accuracy=champion_accuracy), POLICY)
    assert decision.promote is promote
    assert "vs champion version 7" in decision.reasons[0] and "margin 0.05" in decision.reasons[0]


@pytest.mark.parametrize("champion_perplexity, promote", [(3.0, True), (2.8, True), (2.7, False), (2.0, False)])
def test_challenger_perplexity_within_ratio_of_the_champions(champion_perplexity: float, promote: bool) -> None:
    # 3.0 <= 1.1 * 2.8 = 3.08 passes; 3.0 > 1.1 * 2.7 = 2.97 fails
    decision = decide_promotion(GOOD, champion(answer_accuracy=0.5, target_perplexity=champion_perplexity), POLICY)
    assert decision.promote is promote
    if not promote:
        assert decision.reasons == [
            f"champion guardrail: target_perplexity 3 > 1.1 x champion's {champion_perplexity:g}"]


def test_champion_guardrail_needs_the_metric_on_both_sides() -> None:
    no_perplexity = {k: v for k, v in GOOD.items() if k != "target_perplexity"}
    decision = decide_promotion(GOOD, Champion("7", {**no_perplexity, "answer_accuracy": 0.1}), POLICY)
    assert decision.reasons == ["champion guardrail: target_perplexity missing on the champion"]


def test_pinned_champion_is_never_replaced_automatically() -> None:
    pinned = Champion("7", {**GOOD, "answer_accuracy": 0.1}, pinned=True)
    decision = decide_promotion({**GOOD, "answer_accuracy": 0.99}, pinned, POLICY)
    assert not decision.promote
    assert decision.reasons == ["champion version 7 is pinned: only a person moves it"]
    # guardrails are still reported first: the reason a version fails on its own comes before the pin
    assert decide_promotion({**GOOD, "termination_rate": 0.0}, pinned, POLICY).reasons[0].startswith("guardrail:")
