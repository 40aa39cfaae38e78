"""Held out by document: CP never trains on a held-out document or a long shingle of one, a document keeps its side
as the corpus grows, and fewer held-out documents than `data.heldout_min` is reported (none at all is an error)."""
from __future__ import annotations

import io
import json
import logging
import random
from pathlib import Path

import pytest

from pipelines.atomic import read_jsonl
from pipelines.config import DataParams
from pipelines.corpus.files import EVAL, TRAIN, VALID
from pipelines.corpus.heldout import HeldOutSplit
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
    return texts(TRAIN), texts(VALID), stats(tmp_path)["incoming"]


def stats(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "stats.json").read_text())


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


def test_with_the_default_params_no_document_changes_side_as_the_corpus_grows(tmp_path: Path) -> None:
    docs = documents(4000)  # documents(40) and documents(400) are its first 40 and 400
    runs = {count: corpus(tmp_path / str(count), docs[:count]) for count in (40, 400, 4000)}
    first_train, first_heldout, _ = runs[40]
    held = set(docs[:40]) & set(first_heldout)
    assert held and set(docs[:40]) - held <= set(first_train)
    for count in (400, 4000):
        train, heldout, _ = runs[count]
        assert held <= set(heldout) and not held & set(train), count  # held out at 40: still held out
        assert not (set(docs[:40]) - held) & set(heldout), count  # trained on at 40: still trained on
    assert set(docs[:400]) & set(runs[4000][1]) == set(docs[:400]) & set(runs[400][1])


def test_a_shortfall_from_the_floor_is_reported_with_a_fix_that_meets_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        _, heldout, counts = corpus(tmp_path, documents(40))  # the defaults: 5% held out, a floor of 8
    held = len(set(heldout) & set(documents(40)))
    assert 0 < held == counts["heldout"] < 8
    shortfall = stats(tmp_path)["heldout_shortfall"]
    assert shortfall == {"heldout": held, "floor": 8, "documents": 40, "fix": "raise data.heldout_share from 0.05 "
                         "to 0.14, which holds out at least 8 of these 40 documents (or add documents)"}
    assert f"data.heldout_min: {held} of 40 documents held out, fewer than 8: raise data.heldout_share" in caplog.text
    _, _, counts = corpus(tmp_path / "fixed", documents(40), heldout_share=0.14)
    assert counts["heldout"] >= 8 and "heldout_shortfall" not in stats(tmp_path / "fixed")
    corpus(tmp_path / "grown", documents(400))
    assert "heldout_shortfall" not in stats(tmp_path / "grown")


def test_where_no_share_reaches_the_floor_the_fix_is_more_documents() -> None:
    split = HeldOutSplit(0.05, floor=8, seed=0)
    assert list(split.training(documents(6), io.StringIO())) == documents(6)
    assert split.shortfall() == {"heldout": 0, "floor": 8, "documents": 6, "fix": "add documents: no "
                                 "data.heldout_share below 0.5 holds out 8 of these 6"}
    assert HeldOutSplit(0.05, floor=8, seed=0).shortfall() is None  # no documents, nothing to hold out


def test_a_document_corpus_with_nothing_held_out_is_an_error_naming_the_share(tmp_path: Path) -> None:
    (tmp_path / "imported").mkdir()
    (tmp_path / "imported" / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in documents(40)))
    build = lambda **data: build_corpus(  # noqa: E731
        DataParams(source="documents", documents="/anywhere", **data), tmp_path / "corpus", tmp_path / "stats.json",
        None, tmp_path / "imported")
    build()  # a few held out by hash: below the floor, reported
    with pytest.raises(ValueError, match=r"data.heldout_share: no document held out of 40 \(held-out loss and "
                                         r"perplexity need some\): raise data.heldout_share from 0.0 to 0.14"):
        build(heldout_share=0.0)
    assert read_jsonl(tmp_path / "corpus" / VALID)  # the last corpus stays as it was
    build(heldout_share=0.0, heldout_min=0)  # no floor, no check: every document is trained on
    assert not read_jsonl(tmp_path / "corpus" / VALID) and len(read_jsonl(tmp_path / "corpus" / TRAIN)) == 40
