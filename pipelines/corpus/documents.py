"""Target-language documents from files: what the inbox delivered, added to the CP corpus by the corpus stage."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines.atomic import read_jsonl

DOCUMENT_SUFFIXES = (".txt", ".jsonl", ".parquet")


def _jsonl_documents(path: Path) -> list[str]:
    documents = []
    for number, row in enumerate(read_jsonl(path), start=1):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise ValueError(f"{path}: record {number}: expected an object with a string `text`")
        documents.append(row["text"])
    return documents


def _parquet_documents(path: Path) -> list[str]:
    table = pd.read_parquet(path)
    if "text" not in table.columns:
        raise ValueError(f"{path}: no `text` column (columns: {', '.join(map(str, table.columns))})")
    return [str(text) for text in table["text"].dropna()]


def read_file_documents(path: Path) -> list[str]:
    """The documents of one file: a .txt file is one document, .jsonl has a `text` per line, .parquet a `text`
    column. Empty documents are dropped."""
    readers = {".txt": lambda p: [p.read_text()], ".jsonl": _jsonl_documents, ".parquet": _parquet_documents}
    if path.suffix not in readers:
        raise ValueError(f"{path}: unsupported corpus file (expected one of {', '.join(DOCUMENT_SUFFIXES)})")
    return [text.strip() for text in readers[path.suffix](path) if text.strip()]


def read_documents(folder: Path) -> dict[str, list[str]]:
    """Documents per file (relative path) under `folder`, in path order; nothing when the folder is absent."""
    if not folder.is_dir():
        return {}
    return {str(path.relative_to(folder)): read_file_documents(path)
            for path in sorted(folder.rglob("*")) if path.is_file()}
