"""Target-language documents from files: what the inbox delivered, added to the CP corpus by the corpus stage.

Documents are read lazily (a jsonl line, a parquet record batch at a time), so a corpus larger than memory
streams through cleaning and deduplication into the training text.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.atomic import iter_jsonl

DOCUMENT_SUFFIXES = (".txt", ".jsonl", ".parquet")
PARQUET_BATCH = 1024  # records


def _text_documents(path: Path) -> Iterator[str]:
    data = path.read_bytes()
    if b"\x00" in data:
        raise ValueError(f"{path}: binary data (NUL bytes), not text")
    try:
        yield data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start})") from None


def _jsonl_documents(path: Path) -> Iterator[str]:
    for number, row in enumerate(iter_jsonl(path), start=1):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise ValueError(f"{path}: record {number}: expected an object with a string `text`")
        yield row["text"]


def _parquet_documents(path: Path) -> Iterator[str]:
    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"{path}: not a readable parquet file: {error}") from None
    if "text" not in table.schema_arrow.names:
        raise ValueError(f"{path}: no `text` column (columns: {', '.join(table.schema_arrow.names)})")
    for batch in table.iter_batches(batch_size=PARQUET_BATCH, columns=["text"]):
        yield from (str(text) for text in batch.column("text").to_pylist() if text is not None)


def read_file_documents(path: Path) -> Iterator[str]:
    """The documents of one file, lazily: a .txt file is one document, .jsonl has a `text` per line, .parquet a
    `text` column. Empty documents are dropped."""
    readers = {".txt": _text_documents, ".jsonl": _jsonl_documents, ".parquet": _parquet_documents}
    if path.suffix not in readers:
        raise ValueError(f"{path}: unsupported corpus file (expected one of {', '.join(DOCUMENT_SUFFIXES)})")
    return (text.strip() for text in readers[path.suffix](path) if text.strip())


def document_files(folder: Path) -> list[Path]:
    """The files under `folder`, in path order; none when the folder is absent."""
    return sorted(path for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else []


def check_document_folder(folder: Path) -> None:
    """Raise naming `folder` unless it holds at least one document file and nothing the corpus stage cannot read."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    files = document_files(folder)
    others = [str(path.relative_to(folder)) for path in files if path.suffix not in DOCUMENT_SUFFIXES]
    if others:
        raise ValueError(f"{folder}: files that are not {', '.join(DOCUMENT_SUFFIXES)}: {', '.join(others[:5])}"
                         + (f" and {len(others) - 5} more" if len(others) > 5 else ""))
    if not files:
        raise ValueError(f"{folder}: no document files ({', '.join(DOCUMENT_SUFFIXES)})")
