"""Held out by document: a seeded hash of each document alone decides whether CP may ever train on it.

Nothing but the document, the seed and `data.heldout_share` decides, so a document keeps its side when the corpus
grows: a retrain never trains on what an earlier run held out, and never holds out what it trained on.
`data.heldout_min` is a floor that is checked, never met by moving documents across (training documents moved over
to meet it in a small corpus would go back to training once the corpus grows): a shortfall is reported with its fix.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

from pipelines.config import HELDOUT_SHARE_BELOW


def document_rank(text: str, seed: int) -> float:
    """Where a document falls in [0, 1): held out when below the share."""
    digest = hashlib.sha256(f"{seed}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _just_above(rank: float) -> float:
    """The shortest share with two significant digits that holds out a document of this rank."""
    digits = 1 - math.floor(math.log10(max(rank, 2**-64)))
    return round(math.floor(rank * 10**digits + 1) / 10**digits, digits)


@dataclass
class HeldOutSplit:
    """Splits a stream of documents by their ranks alone, counting each side; of the documents it keeps only the
    `floor` lowest ranks, which say what share would meet the floor."""

    share: float
    floor: int
    seed: int
    held: int = 0
    trained: int = 0
    _lowest: list[float] = field(default_factory=list)  # heap of negated ranks: the `floor` lowest

    def training(self, documents: Iterable[str], heldout: IO[str]) -> Iterator[str]:
        """The documents CP may train on; the held-out ones are written to `heldout` as jsonl rows instead."""
        for text in documents:
            rank = document_rank(text, self.seed)
            heapq.heappush(self._lowest, -rank)
            if len(self._lowest) > self.floor:
                heapq.heappop(self._lowest)
            if rank < self.share:
                heldout.write(json.dumps({"text": text}) + "\n")
                self.held += 1
            else:
                self.trained += 1
                yield text

    def shortfall(self) -> dict[str, int | str] | None:
        """The report of a split holding out fewer than `floor` documents, with its fix; None when the floor is met
        (or there are no documents to hold out)."""
        documents = self.held + self.trained
        if not documents or self.held >= self.floor:
            return None
        return {"heldout": self.held, "floor": self.floor, "documents": documents, "fix": self._fix(documents)}

    def _fix(self, documents: int) -> str:
        """What meets the floor: the share that holds out `floor` of these documents (the next run holds out those
        ranked below it), or more documents where no share below HELDOUT_SHARE_BELOW would."""
        share = _just_above(-self._lowest[0]) if documents >= self.floor else HELDOUT_SHARE_BELOW
        if share >= HELDOUT_SHARE_BELOW:
            return (f"add documents: no data.heldout_share below {HELDOUT_SHARE_BELOW} holds out {self.floor} of "
                    f"these {documents}")
        return (f"raise data.heldout_share from {self.share} to {share}, which holds out at least {self.floor} of "
                f"these {documents} documents (or add documents)")
