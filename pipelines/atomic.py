"""Outputs appear whole or not at all: write beside the target, then rename into place.

A directory output carries a marker naming its kind, so that replacing it later is known to lose only what
chatgraft wrote there: a folder that holds anything else is refused unless the caller says to overwrite.
Outputs get the modes the umask gives: temporary files and folders are created private, and so are some files
writers put in a staging folder (safetensors writes 0600), so everything in a folder output is opened up before
it is renamed into place.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

OUTPUT_MARKER = ".chatgraft-output"  # in every directory output: the kind of output it is


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _umask()  # read once: os.umask can only be read by setting it, which would race with other threads


def _staging_prefix(target: Path) -> str:
    return f".{target.name}."


def staging_left_behind(target: Path) -> list[Path]:
    """The temporary folders and files writers of `target` left beside it when they were killed outright (SIGKILL,
    the OOM killer, a lost machine): a model's worth of disk each. Only call while no writer of `target` runs."""
    pattern = re.compile(re.escape(_staging_prefix(target)) + r"[a-z0-9_]{8}")  # what mkdtemp/mkstemp append
    if not target.parent.is_dir():
        return []
    return sorted(p for p in target.parent.iterdir() if pattern.fullmatch(p.name))


def exit_cleanly_on_sigterm() -> None:
    """Make SIGTERM (what schedulers and the flow send) unwind like an error, so the staging of an output being
    written is removed; by default Python dies at once and leaves it behind, a model's worth of disk per kill."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


class OutputExistsError(FileExistsError):
    """The output path holds something chatgraft did not write as that kind of output; nothing was replaced."""


def output_kind(folder: Path) -> str | None:
    """The kind of chatgraft output `folder` is, from its marker; None when it has none."""
    try:
        return (folder / OUTPUT_MARKER).read_text().strip() or None
    except OSError:
        return None


def check_replaceable(target: Path, kind: str) -> None:
    """Raise OutputExistsError unless `target` is absent, empty, or a previous chatgraft output of `kind`."""
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink() or not target.is_dir():
        raise OutputExistsError(f"{target}: exists and is not a folder chatgraft wrote; nothing was replaced "
                                "(choose another output path, or remove it yourself)")
    entries = sorted(p.name for p in target.iterdir())
    found = output_kind(target)
    if entries and found != kind:
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        what = f"a chatgraft {found}" if found else "files chatgraft did not write"
        raise OutputExistsError(f"{target}: already holds {what} ({shown}), not a previous {kind}; nothing was "
                                "replaced (choose another output path, or pass --overwrite to replace it)")


def _follow_umask(folder: Path) -> None:
    """Give `folder` and every folder and file under it the mode the umask gives (files keep their execute bit);
    links are left alone, and so are the files they point to."""
    for parent, _, files in os.walk(folder):  # links to folders are listed, never entered
        os.chmod(parent, 0o777 & ~UMASK)
        for path in (os.path.join(parent, name) for name in files):
            if not os.path.islink(path):
                os.chmod(path, (0o777 if os.stat(path).st_mode & 0o100 else 0o666) & ~UMASK)


@contextmanager
def atomic_dir(target: Path, kind: str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that replaces `target` when the block succeeds, and vanishes if it fails.

    `target` may be absent, empty, or a previous output of the same `kind`; anything else raises
    OutputExistsError before any work is done, unless `overwrite` is set.
    """
    if not overwrite:
        check_replaceable(target, kind)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(target), dir=target.parent))
    try:
        yield staging
        (staging / OUTPUT_MARKER).write_text(kind + "\n")
        _follow_umask(staging)
        if not overwrite:
            check_replaceable(target, kind)  # the block ran for minutes: look again before replacing
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def atomic_file(path: Path, binary: bool = False) -> Iterator[IO[Any]]:
    """An open file (text, or bytes when `binary`) that replaces `path` when the block succeeds, and vanishes if it
    fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_staging_prefix(path), dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~UMASK)
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as handle:
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


MAX_RECORD_BYTES = 32 * 2**20  # one jsonl line: larger is a broken file, not a record to load into memory


def numbered_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, record) of each non-blank line of a jsonl file, read a line at a time; a line that is not
    UTF-8 JSON, or longer than MAX_RECORD_BYTES, raises an error naming the file and line."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    with path.open("rb") as handle:
        for number, raw in enumerate(iter(lambda: handle.readline(MAX_RECORD_BYTES + 1), b""), start=1):
            if len(raw) > MAX_RECORD_BYTES:
                raise ValueError(f"{path}:{number}: line longer than {MAX_RECORD_BYTES // 2**20} MiB: not a record")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}:{number}: not UTF-8 text (byte {raw[error.start]:#04x} at column "
                                 f"{error.start + 1})") from None
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON: {error.msg}") from None


def iter_jsonl(path: Path) -> Iterator[Any]:
    """The records of a jsonl file, read a line at a time; a bad line raises an error naming the file and line."""
    return (record for _, record in numbered_jsonl(path))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a jsonl file; a bad line raises an error naming the file and line."""
    return list(iter_jsonl(path))
