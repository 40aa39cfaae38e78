"""Termination and repetition: answers that never stop, or say the same thing again and again."""
from __future__ import annotations


def _ngrams(token_ids: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(token_ids[i : i + n]) for i in range(len(token_ids) - n + 1)]


def termination_rate(terminated: list[bool]) -> float:
    """Share of answers that ended with an end-of-turn/EOS token within the budget."""
    return sum(terminated) / len(terminated) if terminated else 0.0


def repetition_rate(token_ids: list[int], n: int) -> float:
    """Share of the answer's n-grams that repeat an earlier one (0 when it has none)."""
    grams = _ngrams(token_ids, n)
    return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


def distinct_n(answers: list[list[int]], n: int) -> float:
    """Distinct n-grams over all n-grams of all answers (Li et al. 2016); 0 when there are none."""
    grams = [gram for ids in answers for gram in _ngrams(ids, n)]
    return len(set(grams)) / len(grams) if grams else 0.0
