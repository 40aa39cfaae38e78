"""Held out by document: a seeded hash of each document decides whether CP may ever train on it.

The hash, not the document's position, decides, so a document keeps its side when the corpus grows: a retrain
never trains on what an earlier run held out. `data.heldout_share` of the documents are held out, and at least
`data.heldout_min` (never more than half): when the share falls short, the training documents next in hash order
are moved over.
"""
from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO


def document_rank(text: str, seed: int) -> float:
    """Where a document falls in [0, 1): held out when below the share."""
    digest = hashlib.sha256(f"{seed}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class HeldOutSplit:
    """Splits a stream of documents, keeping in memory only the `floor` lowest-ranked training ones."""

    share: float
    floor: int
    seed: int
    held: int = 0
    trained: int = 0
    _lowest: list[tuple[float, str]] = field(default_factory=list)  # heap of (-rank, text): the lowest ranks

    def training(self, documents: Iterable[str], heldout: IO[str]) -> Iterator[str]:
        """The documents CP may train on; the held-out ones are written to `heldout` as jsonl rows instead."""
        for text in documents:
            rank = document_rank(text, self.seed)
            if rank < self.share:
                heldout.write(json.dumps({"text": text}) + "\n")
                self.held += 1
                continue
            self.trained += 1
            heapq.heappush(self._lowest, (-rank, text))
            if len(self._lowest) > self.floor:
                heapq.heappop(self._lowest)
            yield text

    def shortfall(self) -> set[str]:
        """Training documents to move to the held-out side to reach the floor (at most half of all documents)."""
        wanted = min(self.floor, (self.held + self.trained) // 2)
        ranked = sorted((-negated, text) for negated, text in self._lowest)
        return {text for _, text in ranked[: max(0, wanted - self.held)]}
