"""Held out by document: CP never trains on a held-out document or a long shingle of one, the split is stable
as the corpus grows, and at least `data.heldout_min` documents are held out."""
from __future__ import annotations

import json
import random
from pathlib import Path

from pipelines.atomic import read_jsonl
from pipelines.config import DataParams
from pipelines.corpus.files import EVAL, TRAIN, VALID
from pipelines.corpus.stage import build_corpus

WORDS = [f"w{i}" for i in range(3000)]


def shingles(text: str, size: int) -> set[tuple[str, ...]]:
    words = text.split()
    return {tuple(words[i : i + size]) for i in range(len(words) - size + 1)}


def corpus(tmp_path: Path, documents: list[str], **data: object) -> tuple[list[str], list[str], dict]:
    """Build the corpus with `documents` in the inbox; (training texts, held-out texts, incoming counts)."""
    incoming = tmp_path / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    (incoming / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in documents))
    out = tmp_path / "corpus"
    build_corpus(DataParams(source_entities=4, target_entities=8, **data), out, tmp_path / "stats.json", incoming)
    texts = lambda name: [row["text"] for row in read_jsonl(out / name)]  # noqa: E731
    return texts(TRAIN), texts(VALID), json.loads((tmp_path / "stats.json").read_text())["incoming"]


def documents(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=40)) for _ in range(count)]


def test_no_held_out_document_or_long_shingle_of_one_is_trained_on(tmp_path: Path) -> None:
    docs = documents(200)
    train, heldout, counts = corpus(tmp_path, docs, heldout_share=0.1)
    held_docs = [text for text in heldout if text in docs]
    assert 8 <= len(held_docs) == counts["heldout"] < 50 and counts["documents"] == 200
    trained = set().union(*(shingles(text, 8) for text in train))
    assert not trained & set().union(*(shingles(text, 8) for text in held_docs))
    assert not set(heldout) & set(train)
    assert set(docs) == set(held_docs) | (set(train) & set(docs))  # every document is on one side


def test_the_default_worlds_held_out_text_is_phrasings_cp_never_saw(tmp_path: Path) -> None:
    train, heldout, _ = corpus(tmp_path, [])
    questions = {row["messages"][0]["content"] for row in read_jsonl(tmp_path / "corpus" / EVAL)}
    assert heldout and all(any(text.startswith(q) for q in questions) for text in heldout)
    trained = set().union(*(shingles(text, 6) for text in train))
    assert not trained & set().union(*(shingles(text, 6) for text in heldout))


def test_a_document_keeps_its_side_when_the_corpus_grows(tmp_path: Path) -> None:
    docs = documents(100)
    _, before, _ = corpus(tmp_path / "a", docs, heldout_share=0.2, heldout_min=0)
    _, after, _ = corpus(tmp_path / "b", docs + documents(100, seed=1), heldout_share=0.2, heldout_min=0)
    assert {t for t in before if t in docs} == {t for t in after if t in docs}


def test_at_least_the_floor_is_held_out_and_never_more_than_half(tmp_path: Path) -> None:
    _, _, counts = corpus(tmp_path / "a", documents(20), heldout_share=0.0, heldout_min=8)
    assert counts["heldout"] == 8
    train, heldout, counts = corpus(tmp_path / "b", documents(6), heldout_share=0.0, heldout_min=8)
    assert counts["heldout"] == 3 and len(set(documents(6)) & set(train)) == 3
