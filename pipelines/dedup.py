"""Exact and near (MinHash LSH) duplicate detection over texts, first occurrence kept."""
from __future__ import annotations

import hashlib

import regex
from datasketch import MinHash, MinHashLSH

WORD = regex.compile(r"\w+")


def normalise(text: str) -> str:
    """Lower case, words only: what two copies that differ in spacing, case or punctuation share."""
    return " ".join(WORD.findall(text.lower()))


def exact_duplicates(texts: list[str]) -> list[bool]:
    """True for each text whose normalised form appeared earlier in the list."""
    seen: set[bytes] = set()
    flags = []
    for text in texts:
        digest = hashlib.blake2b(normalise(text).encode(), digest_size=16).digest()
        flags.append(digest in seen)
        seen.add(digest)
    return flags


def _minhash(text: str, shingle: int, num_perm: int, seed: int) -> MinHash:
    words = normalise(text).split()
    grams = {" ".join(words[i:i + shingle]) for i in range(max(1, len(words) - shingle + 1))}
    signature = MinHash(num_perm=num_perm, seed=seed)
    signature.update_batch([gram.encode() for gram in grams])
    return signature


def near_duplicates(texts: list[str], threshold: float = 0.8, shingle: int = 3, num_perm: int = 128,
                    seed: int = 1) -> list[bool]:
    """True for each text whose estimated Jaccard similarity (word `shingle`-grams) to an earlier kept text is at
    least `threshold`, by MinHash LSH; the earlier text is kept."""
    index = MinHashLSH(threshold=threshold, num_perm=num_perm)
    flags = []
    for number, text in enumerate(texts):
        signature = _minhash(text, shingle, num_perm, seed)
        duplicate = bool(index.query(signature))
        if not duplicate:
            index.insert(str(number), signature)
        flags.append(duplicate)
    return flags


EXACT, NEAR = "exact_duplicate", "near_duplicate"


def duplicate_reasons(texts: list[str], near_threshold: float | None = None) -> list[str | None]:
    """Why each text repeats an earlier kept one: `exact_duplicate` (normalised match), then, among the rest and
    when `near_threshold` is set, `near_duplicate` (MinHash); None for the texts to keep."""
    reasons: list[str | None] = [EXACT if repeat else None for repeat in exact_duplicates(texts)]
    if near_threshold is not None:
        rest = [i for i, reason in enumerate(reasons) if reason is None]
        for i, near in zip(rest, near_duplicates([texts[i] for i in rest], near_threshold)):
            reasons[i] = NEAR if near else None
    return reasons
