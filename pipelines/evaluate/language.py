"""Language consistency: how much of each answer is in the target language.

Real languages are told by Unicode script (Hangul, Han, Cyrillic, ...): the share of an answer's letters in
those scripts. The default world has no script of its own, so there the share of words in its target lexicon.
"""
from __future__ import annotations

import regex

from pipelines.evaluate.instruction import normalize

_LETTER = regex.compile(r"\p{L}")


def script_pattern(scripts: list[str]) -> regex.Pattern:
    """A pattern matching one letter of any of the scripts; an unknown script name is an error naming it."""
    for script in scripts:
        try:
            regex.compile(rf"\p{{Script={script}}}")
        except regex.error:
            raise ValueError(f"unknown Unicode script {script!r} (examples: Hangul, Han, Cyrillic, Latin)") from None
    return regex.compile("|".join(rf"\p{{Script={s}}}" for s in scripts))


def script_share(text: str, scripts: regex.Pattern) -> float | None:
    """Share of the text's letters in the scripts; None when it has no letters."""
    letters = _LETTER.findall(text)
    return sum(bool(scripts.match(letter)) for letter in letters) / len(letters) if letters else None


def lexicon_share(text: str, lexicon: set[str]) -> float | None:
    """Share of the text's normalised words in the lexicon; None when it has no words."""
    words = normalize(text)
    return sum(word in lexicon for word in words) / len(words) if words else None


def language_consistency(shares: list[float | None]) -> float:
    """Mean share over the answers that have letters (0 when none has)."""
    measured = [share for share in shares if share is not None]
    return sum(measured) / len(measured) if measured else 0.0
