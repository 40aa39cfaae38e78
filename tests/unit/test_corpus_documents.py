"""Corpus files the inbox delivers: one reader per format, errors that name the file."""
from pathlib import Path

import pandas as pd
import pytest

from pipelines.corpus.documents import PARQUET_BATCH, document_files, read_file_documents


def test_each_format_gives_its_documents(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("  the city of kato is far .\n\nsecond paragraph .\n")
    (tmp_path / "b.jsonl").write_text('{"text": "one ."}\n\n{"text": "  "}\n{"text": "two ."}\n')
    pd.DataFrame({"text": ["three .", None, "four ."], "id": [1, 2, 3]}).to_parquet(tmp_path / "c.parquet")
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "d.txt").write_text("five .")
    assert {str(path.relative_to(tmp_path)): list(read_file_documents(path)) for path in document_files(tmp_path)} == {
        "a.txt": ["the city of kato is far .\n\nsecond paragraph ."],
        "b.jsonl": ["one .", "two ."],
        "c.parquet": ["three .", "four ."],
        "deep/d.txt": ["five ."],
    }


def test_parquet_is_read_a_record_batch_at_a_time(tmp_path: Path) -> None:
    texts = [f"document {i} ." for i in range(3 * PARQUET_BATCH + 5)]
    pd.DataFrame({"text": texts}).to_parquet(tmp_path / "big.parquet", row_group_size=PARQUET_BATCH)
    documents = read_file_documents(tmp_path / "big.parquet")
    assert next(documents) == "document 0 ."  # lazy: a generator, not a list read whole
    assert [texts[0], *documents] == texts


def test_no_folder_means_no_documents(tmp_path: Path) -> None:
    assert document_files(tmp_path / "absent") == []


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", '{"text": "ok"}\n{"body": "x"}\n', r"bad.jsonl: record 2: expected an object with a string `text`"),
    ("bad.jsonl", '{"text": "ok"}\nnot json\n', r"bad.jsonl:2: not valid JSON"),
    ("notes.md", "# hi", r"notes.md: unsupported corpus file \(expected one of .txt, .jsonl, .parquet\)"),
])
def test_bad_files_are_named(tmp_path: Path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=message):
        list(read_file_documents(tmp_path / name))


def test_parquet_without_text_column_is_named(tmp_path: Path) -> None:
    pd.DataFrame({"body": ["x"]}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(ValueError, match=r"t.parquet: no `text` column \(columns: body\)"):
        list(read_file_documents(tmp_path / "t.parquet"))


def test_cleaning_fixes_mojibake_controls_and_whitespace() -> None:
    from pipelines.corpus.cleaning import clean_document

    raw = "  Caf\u00c3\u00a9  in\tseoul \x07&amp; \u201cquotes\u201d stay \r\n\n\n\n\u1100\u1161 next  line  \n"
    assert clean_document(raw) == "Café in seoul & \u201cquotes\u201d stay\n\n\uac00 next line"  # jamo composed (NFC)


def test_corpus_counts_documents_cleaned_away_and_duplicates(tmp_path: Path) -> None:
    import json

    from pipelines.config import DataParams
    from pipelines.corpus.files import TRAIN
    from pipelines.corpus.stage import build_corpus

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in [
        "the  city of kato is far .", "the city of kato is far .", "\x07 ok", "a long enough document ."]))
    build_corpus(DataParams(source_entities=4, target_entities=4, min_document_chars=5, heldout_min=0,
                            heldout_share=0.0), tmp_path / "corpus",
                 tmp_path / "stats.json", incoming)
    report = json.loads((tmp_path / "stats.json").read_text())
    stats = report["incoming"]
    assert stats["documents"] == 2 and stats["too_short_removed"] == 1 and stats["duplicates_removed"] == 1
    assert report["world"] == "domain" and report["world_settings"]["cp.new_tokens"] == 0  # what `auto` means there
    train = (tmp_path / "corpus" / TRAIN).read_text()
    assert "the city of kato is far ." in train and "the  city" not in train


def test_incoming_documents_stream_into_the_training_text(tmp_path: Path) -> None:
    import json
    import random
    import tracemalloc

    from pipelines.config import DataParams
    from pipelines.corpus.files import TRAIN, VALID
    from pipelines.corpus.stage import build_corpus

    incoming, rng = tmp_path / "incoming", random.Random(0)
    incoming.mkdir()
    words = [f"w{i}" for i in range(5000)]
    with (incoming / "big.jsonl").open("w") as handle:
        for _ in range(1000):  # ~2.7 MB of distinct documents
            handle.write(json.dumps({"text": " ".join(rng.choices(words, k=500))}) + "\n")
    size = (incoming / "big.jsonl").stat().st_size
    tracemalloc.start()
    try:
        build_corpus(DataParams(source_entities=4, target_entities=4, dedup="exact"), tmp_path / "corpus",
                     tmp_path / "stats.json", incoming)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert json.loads((tmp_path / "stats.json").read_text())["incoming"]["documents"] == 1000
    written = sum((tmp_path / "corpus" / name).stat().st_size for name in (TRAIN, VALID))  # trained on, held out
    assert written > size
    assert peak < size / 2, f"peak {peak:,} bytes for {size:,} bytes of documents: they were held in memory"


def test_a_document_corpus_is_the_documents_only_streamed(tmp_path: Path) -> None:
    import json
    import random
    import tracemalloc

    from pipelines.atomic import read_jsonl
    from pipelines.config import DataParams
    from pipelines.corpus.files import TRAIN, VALID
    from pipelines.corpus.stage import build_corpus

    documents, rng = tmp_path / "imported", random.Random(1)
    (documents / "part").mkdir(parents=True)
    words = [f"w{i}" for i in range(5000)]
    texts = [" ".join(rng.choices(words, k=500)) for _ in range(1200)]  # ~3.5 MB; parquet is read a batch at a time
    (documents / "part" / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:1000]))
    pd.DataFrame({"text": texts[1000:]}).to_parquet(documents / "b.parquet")
    params = DataParams(source="documents", documents="/anywhere", heldout_share=0.1)
    tracemalloc.start()
    try:
        build_corpus(params, tmp_path / "corpus", tmp_path / "stats.json", tmp_path / "no-inbox", documents)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    train = [row["text"] for row in read_jsonl(tmp_path / "corpus" / TRAIN)]
    held = [row["text"] for row in read_jsonl(tmp_path / "corpus" / VALID)]
    assert sorted(train + held) == sorted(texts) and 80 <= len(held) <= 160  # nothing generated, ~10% held out
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["documents"]["files"] == 2 and "source_entities" not in stats
    assert peak < sum(map(len, texts)) / 2, f"peak {peak:,} bytes: the documents were held in memory"

    (documents / "part" / "a.jsonl").write_text("")
    (documents / "b.parquet").unlink()
    with pytest.raises(ValueError, match="data.documents: no document left to train on"):
        build_corpus(params, tmp_path / "corpus", tmp_path / "stats.json", None, documents)
    assert len(list(read_jsonl(tmp_path / "corpus" / TRAIN))) == len(train)  # the last corpus is kept whole
