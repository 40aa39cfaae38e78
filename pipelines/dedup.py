"""Exact and near (MinHash LSH) duplicate detection over texts, first occurrence kept."""
from __future__ import annotations

import hashlib

import regex
from datasketch import MinHash, MinHashLSH

WORD = regex.compile(r"\w+")


def normalise(text: str) -> str:
    """Lower case, words only: what two copies that differ in spacing, case or punctuation share."""
    return " ".join(WORD.findall(text.lower()))


def _digest(text: str) -> bytes:
    return hashlib.blake2b(normalise(text).encode(), digest_size=16).digest()


def _minhash(text: str, shingle: int, num_perm: int, seed: int) -> MinHash:
    words = normalise(text).split()
    grams = {" ".join(words[i:i + shingle]) for i in range(max(1, len(words) - shingle + 1))}
    signature = MinHash(num_perm=num_perm, seed=seed)
    signature.update_batch([gram.encode() for gram in grams])
    return signature


EXACT, NEAR = "exact_duplicate", "near_duplicate"


class DuplicateFilter:
    """Texts seen one at a time, each judged against the earlier ones; the first occurrence is kept.

    Exact: the normalised text's 16-byte digest was seen before. Near (when `near_threshold` is set): the
    estimated Jaccard similarity of word `shingle`-grams to an earlier kept text is at least the threshold, by
    MinHash LSH. Memory grows with the texts kept (a digest, and a signature for near), not with their length.
    """

    def __init__(self, near_threshold: float | None = None, shingle: int = 3, num_perm: int = 128,
                 seed: int = 1) -> None:
        self._seen: set[bytes] = set()
        self._index = MinHashLSH(threshold=near_threshold, num_perm=num_perm) if near_threshold else None
        self._shingle, self._num_perm, self._seed = shingle, num_perm, seed

    def reason(self, text: str) -> str | None:
        """Why `text` repeats an earlier one (`exact_duplicate`, `near_duplicate`), or None to keep it."""
        digest = _digest(text)
        if digest in self._seen:
            return EXACT
        self._seen.add(digest)
        if self._index is None:
            return None
        signature = _minhash(text, self._shingle, self._num_perm, self._seed)
        if self._index.query(signature):
            return NEAR
        self._index.insert(str(len(self._seen)), signature)
        return None


def duplicate_reasons(texts: list[str], near_threshold: float | None = None) -> list[str | None]:
    """`DuplicateFilter.reason` of each text in order."""
    duplicates = DuplicateFilter(near_threshold)
    return [duplicates.reason(text) for text in texts]
