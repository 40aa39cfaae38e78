"""Outputs appear whole or not at all: write beside the target, then rename into place."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `target` when the block succeeds, and vanishes if it fails."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def atomic_file(path: Path) -> Iterator[TextIO]:
    """An open text file that replaces `path` when the block succeeds, and vanishes if it fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file through a temporary file and a rename."""
    with atomic_file(path) as handle:
        handle.write(text)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON (indented, keys in order given) atomically."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object a line, atomically, as `rows` yields them; return how many were written."""
    count = 0
    with atomic_file(path) as handle:
        for count, row in enumerate(rows, start=1):
            handle.write(json.dumps(row) + "\n")
    return count


def iter_jsonl(path: Path) -> Iterator[Any]:
    """The records of a jsonl file, read a line at a time; a bad line raises an error naming the file and line."""
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON: {error.msg}") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a jsonl file; a bad line raises an error naming the file and line."""
    return list(iter_jsonl(path))
