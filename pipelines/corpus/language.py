"""The language world's target language: every source word has an invented word written in Hangul.

The dictionary is fixed by the seed and consistent, so CP can learn the language from text; word order and
punctuation stay the source's. A byte-level BPE tokenizer trained on source text only splits these words into
many byte pieces (three bytes a syllable), as Llama 2's tokenizer splits Korean.
"""
from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass

SCRIPT = "Hangul"  # eval's language consistency counts this script's letters
_FIRST_SYLLABLE, _SYLLABLES = 0xAC00, 11172  # the precomposed Hangul syllables block
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class TargetLanguage:
    """Source word -> target word."""

    words: dict[str, str]

    def translate(self, text: str) -> str:
        """The text with each whitespace-separated source word replaced; other tokens (punctuation, markup) kept."""
        return " ".join(self.words.get(token, token) for token in text.split())

    def code_switch(self, text: str, share: float, rng: random.Random) -> str:
        """The text with each source word replaced with probability `share` (mixed-language text)."""
        return " ".join(self.words.get(token, token) if rng.random() < share else token for token in text.split())


def _invented_word(rng: random.Random) -> str:
    return "".join(chr(_FIRST_SYLLABLE + rng.randrange(_SYLLABLES)) for _ in range(rng.choice((1, 2, 2, 3))))


def invent_language(texts: Iterable[str], seed: int) -> TargetLanguage:
    """A distinct invented word for every lower-case word of `texts`, drawn in sorted order from `seed`."""
    vocabulary = sorted({token for text in texts for token in text.split() if _WORD.fullmatch(token)})
    rng, taken, words = random.Random(seed), set(), {}
    for word in vocabulary:
        invented = _invented_word(rng)
        while invented in taken:
            invented = _invented_word(rng)
        taken.add(invented)
        words[word] = invented
    return TargetLanguage(words)
