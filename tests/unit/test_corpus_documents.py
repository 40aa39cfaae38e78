"""Corpus files the inbox delivers: one reader per format, errors that name the file."""
from pathlib import Path

import pandas as pd
import pytest

from pipelines.corpus.documents import read_documents, read_file_documents


def test_each_format_gives_its_documents(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("  the city of kato is far .\n\nsecond paragraph .\n")
    (tmp_path / "b.jsonl").write_text('{"text": "one ."}\n\n{"text": "  "}\n{"text": "two ."}\n')
    pd.DataFrame({"text": ["three .", None, "four ."], "id": [1, 2, 3]}).to_parquet(tmp_path / "c.parquet")
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "d.txt").write_text("five .")
    assert read_documents(tmp_path) == {
        "a.txt": ["the city of kato is far .\n\nsecond paragraph ."],
        "b.jsonl": ["one .", "two ."],
        "c.parquet": ["three .", "four ."],
        "deep/d.txt": ["five ."],
    }


def test_no_folder_means_no_documents(tmp_path: Path) -> None:
    assert read_documents(tmp_path / "absent") == {}


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", '{"text": "ok"}\n{"body": "x"}\n', r"bad.jsonl: record 2: expected an object with a string `text`"),
    ("bad.jsonl", '{"text": "ok"}\nnot json\n', r"bad.jsonl:2: not valid JSON"),
    ("notes.md", "# hi", r"notes.md: unsupported corpus file \(expected one of .txt, .jsonl, .parquet\)"),
])
def test_bad_files_are_named(tmp_path: Path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=message):
        read_file_documents(tmp_path / name)


def test_parquet_without_text_column_is_named(tmp_path: Path) -> None:
    pd.DataFrame({"body": ["x"]}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(ValueError, match=r"t.parquet: no `text` column \(columns: body\)"):
        read_file_documents(tmp_path / "t.parquet")


def test_cleaning_fixes_mojibake_controls_and_whitespace() -> None:
    from pipelines.corpus.cleaning import clean_document

    raw = "  Caf\u00c3\u00a9  in\tseoul \x07&amp; \u201cquotes\u201d stay \r\n\n\n\n\u1100\u1161 next  line  \n"
    assert clean_document(raw) == "Café in seoul & \u201cquotes\u201d stay\n\n\uac00 next line"  # jamo composed (NFC)


def test_corpus_counts_documents_cleaned_away_and_duplicates(tmp_path: Path) -> None:
    import json

    from pipelines.config import DataParams
    from pipelines.corpus import TRAIN, build_corpus

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in [
        "the  city of kato is far .", "the city of kato is far .", "\x07 ok", "a long enough document ."]))
    build_corpus(DataParams(source_entities=4, target_entities=4, min_document_chars=5), tmp_path / "corpus",
                 tmp_path / "stats.json", incoming)
    stats = json.loads((tmp_path / "stats.json").read_text())["incoming"]
    assert stats["documents"] == 2 and stats["too_short_removed"] == 1 and stats["duplicates_removed"] == 1
    train = (tmp_path / "corpus" / TRAIN).read_text()
    assert "the city of kato is far ." in train and "the  city" not in train
