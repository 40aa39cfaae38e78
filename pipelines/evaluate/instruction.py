"""Instruction following: answers against references (exact match, contains, token F1), normalised."""
from __future__ import annotations

import re
import string
from collections import Counter

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize(text: str) -> list[str]:
    """Lower-case words with punctuation removed."""
    return _PUNCTUATION.sub(" ", text.lower()).split()


def exact_match(answer: str, reference: str) -> bool:
    """The normalised answer is the normalised reference."""
    return normalize(answer) == normalize(reference)


def contains(answer: str, reference: str) -> bool:
    """The answer contains the reference's words, in order and adjacent."""
    expected, words = normalize(reference), normalize(answer)
    return bool(expected) and any(words[i : i + len(expected)] == expected
                                  for i in range(len(words) - len(expected) + 1))


def token_f1(answer: str, reference: str) -> float:
    """F1 of the bags of normalised words (1.0 when both are empty)."""
    predicted, expected = Counter(normalize(answer)), Counter(normalize(reference))
    if not predicted or not expected:
        return float(predicted == expected)
    overlap = sum((predicted & expected).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / sum(predicted.values()), overlap / sum(expected.values())
    return 2 * precision * recall / (precision + recall)


def answer_correct(answer: str, reference: str, terminated: bool) -> bool:
    """The answer ended with an end-of-turn token and contains the reference: a usable, right answer."""
    return terminated and contains(answer, reference)
