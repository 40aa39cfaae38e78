"""The inbox: new corpus files dropped in a folder or an S3 prefix, taken into the DVC-versioned snapshot.

Whoever can write to the inbox is not trusted with the rest of the project: a name that could land outside the
snapshot (`..`, absolute, not a plain relative path), a link out of a local inbox, and a file chatgraft cannot
read as documents are refused, reported, and never written into the snapshot. Nothing one file does stops the
intake: a name that collides with the snapshot (a file where a folder is needed, or the reverse) and an object gone
or unreadable when fetched are refused the same way; only a problem of the whole inbox (credentials, the endpoint)
or of the disk written to raises, so that the task is retried.
"""
from __future__ import annotations

import errno
import filecmp
import hashlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from pipelines.atomic import write_json_atomic
from pipelines.corpus.documents import DOCUMENT_SUFFIXES, read_file_documents
from pipelines.layout import Layout

if TYPE_CHECKING:
    from flows.dvc_project import DvcProject

INTAKE_STAGE = "inbox"  # its output is what the intake takes in and records

NAME_MAX = 255  # bytes in one path component on Linux filesystems
# S3 error codes that concern one object (gone, or not readable with these credentials), not the whole inbox
OBJECT_ERROR_CODES = frozenset({"NoSuchKey", "NotFound", "404", "AccessDenied", "403", "InvalidObjectState"})
# errors of the disk a fetch writes to: every file would fail the same way, so the intake stops instead
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


@dataclass(frozen=True)
class InboxFile:
    """One inbox file: its name relative to the inbox, the md5 its source reports (None: unknown), how to fetch
    it, and why it must not be taken when the listing already knows (a link out of the inbox)."""

    name: str
    md5: str | None
    fetch: Callable[[Path], None]
    refusal: str | None = None


@dataclass(frozen=True)
class Intake:
    """What one intake took into the snapshot, what it left (not a corpus file type), and what it refused, why."""

    taken: list[str]
    skipped: list[str]
    refused: dict[str, str] = field(default_factory=dict)

    def as_report(self, source: str) -> dict[str, object]:
        """The intake as a JSON-able report."""
        return {"inbox": source, "taken": self.taken, "skipped": self.skipped, "refused": self.refused}


def unsafe_name(name: str) -> str | None:
    """Why an inbox name cannot be a path inside the snapshot, or None when it can."""
    if not name:
        return "empty name"
    if any(ord(char) < 32 or char == "\x7f" for char in name):
        return "control characters in the name"
    if name.startswith("/"):
        return "absolute name"
    parts = name.split("/")
    if ".." in parts:
        return "'..' in the name (it would leave the inbox)"
    if "." in parts or "" in parts:
        return "not a plain relative name ('.' or empty segments)"
    if any(len(part.encode()) > NAME_MAX for part in parts):
        return f"a name segment longer than {NAME_MAX} bytes"
    return None


def _local_link_refusal(path: Path, folder: Path) -> str | None:
    if not path.is_symlink():
        return None
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return "broken link, or a link loop"
    return None if resolved.is_relative_to(folder) else f"a link that leads outside the inbox ({resolved})"


def _digest(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def _local_md5(path: Path) -> str:
    """The md5 of the regular file at `path`; OSError when it is gone, unreadable, or not a regular file (reading a
    pipe or a device could block the intake for good)."""
    if not stat.S_ISREG(path.stat().st_mode):
        raise OSError("not a regular file (a pipe, a socket or a device)")
    return _digest(path)


def _local_file(path: Path, folder: Path) -> InboxFile | None:
    """The inbox file at `path`; None for a link to a folder inside the inbox, whose files are listed where they are."""
    refusal = _local_link_refusal(path, folder)
    if refusal is None and path.is_dir():
        return None
    md5 = None
    if refusal is None:
        try:
            md5 = _local_md5(path)
        except OSError as error:  # gone since its folder was listed, or not readable
            refusal = f"gone or unreadable when listed: {error.strerror or error}"
    return InboxFile(path.relative_to(folder).as_posix(), md5, lambda out: shutil.copyfile(path, out), refusal)


def _local_files(folder: Path) -> Iterator[InboxFile]:
    if not folder.is_dir():
        raise FileNotFoundError(f"inbox folder {folder} does not exist (flow.inbox)")
    folder = folder.resolve()
    for directory, subdirs, files in os.walk(folder):  # links to folders are listed, never followed
        for entry in sorted(files + [d for d in subdirs if (Path(directory) / d).is_symlink()]):
            item = _local_file(Path(directory) / entry, folder)
            if item is not None:
                yield item
        subdirs.sort()


def _s3_client(config: Config | None = None) -> BaseClient:
    """An S3 client of a session of its own: credentials are read from the environment now, not the ones boto3's
    default session cached when this process first asked (a long-lived `chatgraft serve` sees rotated keys)."""
    return boto3.session.Session().client("s3", config=config)


def _s3_location(uri: str) -> tuple[str, str]:
    """The bucket and key prefix of s3://bucket/prefix. The prefix is a folder: s3://bucket/inbox holds the keys
    under `inbox/`, never those of `inbox2/`."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    return bucket, (prefix if not prefix or prefix.endswith("/") else f"{prefix}/")


def _s3_files(uri: str) -> Iterator[InboxFile]:
    """Objects under s3://bucket/prefix; the endpoint and credentials come from the environment
    (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...) as boto3 reads them."""
    bucket, prefix = _s3_location(uri)
    s3 = _s3_client()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key, etag = item["Key"], item["ETag"].strip('"')
            if key.endswith("/"):
                continue
            # a multipart upload's ETag is not the content's md5: such objects are fetched and compared
            md5 = None if "-" in etag else etag
            yield InboxFile(key.removeprefix(prefix), md5, lambda out, key=key: s3.download_file(bucket, key, str(out)))


def inbox_problem(source: str, root: Path) -> str | None:
    """Why the inbox `source` cannot be listed now (a missing folder; S3 without credentials, at a wrong endpoint,
    or a bucket that is not there), or None when it can. Checked before a run starts."""
    if not source.startswith("s3://"):
        folder = root / source
        return None if folder.is_dir() else f"{folder}: no such folder"
    bucket, prefix = _s3_location(source)
    s3 = _s3_client(Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 1}))
    try:
        s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except NoCredentialsError:
        return f"{source}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
    except EndpointConnectionError as error:
        return f"{source}: cannot reach the S3 endpoint ({error}); check AWS_ENDPOINT_URL"
    except (BotoCoreError, ClientError) as error:
        return f"{source}: {error}"
    return None


def inbox_files(source: str, root: Path) -> Iterator[InboxFile]:
    """The files of `source`: a folder (relative to `root`) or an s3://bucket/prefix."""
    return _s3_files(source) if source.startswith("s3://") else _local_files(root / source)


def _unreadable(fetched: Path, name: str) -> str | None:
    """Why the fetched file holds no documents chatgraft can read, or None when it does."""
    try:
        documents = sum(1 for _ in read_file_documents(fetched))  # the whole file: a bad record anywhere refuses it
    except (ValueError, OSError) as error:
        return str(error).replace(str(fetched), name)
    return None if documents else "no documents (empty)"


def _refusal(item: InboxFile, snapshot: Path) -> str | None:
    reason = unsafe_name(item.name) or item.refusal
    if reason is None and not (snapshot / item.name).resolve().is_relative_to(snapshot.resolve()):
        reason = "its place in the snapshot leads outside it (a link in data/incoming)"
    return reason


def _collision(name: str, snapshot: Path, places: dict[Path, str]) -> str | None:
    """Why `name` has no place of its own in the snapshot (a file where it needs a folder, a folder where it needs a
    file, the place of another name of this intake), or None when it has one."""
    for folder in reversed(PurePosixPath(name).parents[:-1]):
        if (snapshot / folder).exists() and not (snapshot / folder).is_dir():
            return f"name collision: '{folder}' is a file in the snapshot, so it cannot be the folder of this file"
    if (snapshot / name).is_dir():
        return f"name collision: '{name}' is a folder in the snapshot (of files taken before), not a file"
    other = places.get((snapshot / name).resolve())
    return None if other is None else f"name collision: its place in the snapshot is that of '{other}' (a link there)"


def _fetch_problem(item: InboxFile, fetched: Path) -> str | None:
    """Fetch `item` into `fetched`: why it could not be (the object is gone or unreadable), or None. Problems of the
    whole inbox (credentials, the endpoint, the service) and of the disk written to raise: no file is to blame."""
    try:
        item.fetch(fetched)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") not in OBJECT_ERROR_CODES:
            raise
        return f"gone or unreadable when fetched: {error}"
    except OSError as error:
        if error.errno in DISK_ERRNOS:
            raise
        return f"gone or unreadable when fetched: {error.strerror or error}"
    return None


def _take(item: InboxFile, snapshot: Path, intake: Intake) -> None:
    """Fetch `item` beside the snapshot, check it and rename it into its place, unless the snapshot holds its bytes;
    `intake` records it as taken or refused."""
    target = snapshot / item.name
    if target.exists() and item.md5 is not None and _digest(target) == item.md5:
        return
    with tempfile.TemporaryDirectory(dir=snapshot.parent, prefix=".intake-") as staging:
        fetched = Path(staging) / PurePosixPath(item.name).name
        reason = _fetch_problem(item, fetched)
        if reason is None and target.exists() and filecmp.cmp(fetched, target, shallow=False):
            return
        reason = reason or _unreadable(fetched, item.name)
        if reason is not None:
            intake.refused[item.name] = reason
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(fetched, target)
    intake.taken.append(item.name)


def take_inbox(files: Iterator[InboxFile], snapshot: Path) -> Intake:
    """Copy each readable file the snapshot lacks, or holds with other bytes, into it; each appears whole
    (fetched beside the snapshot, checked, then renamed in). Files already taken are left where they are. A file
    that cannot be taken (unsafe, colliding, gone, unreadable) is refused with the reason, and the intake goes on."""
    snapshot.mkdir(parents=True, exist_ok=True)
    intake = Intake([], [])
    places: dict[Path, str] = {}  # the place in the snapshot of each name this intake took or found there
    for item in files:
        reason = _refusal(item, snapshot)
        if reason is None and PurePosixPath(item.name).suffix not in DOCUMENT_SUFFIXES:
            intake.skipped.append(item.name)
            continue
        reason = reason or _collision(item.name, snapshot, places)
        if reason is not None:
            intake.refused[item.name] = reason
            continue
        _take(item, snapshot, intake)
        if item.name not in intake.refused:
            places[(snapshot / item.name).resolve()] = item.name
    return intake


def write_intake_report(intake: Intake, source: str, path: Path) -> None:
    """The intake's report (taken, skipped, refused with reasons), written atomically."""
    write_json_atomic(path, intake.as_report(source))


def intake_inbox(dvc: DvcProject, source: str | None, logger: logging.Logger) -> tuple[Intake, str]:
    """Take new corpus files from the inbox `source` (`flow.inbox`) into data/incoming, record them as the `inbox`
    stage's output (`dvc commit inbox`) and log what was left or refused; returns the intake and a line saying what
    came in. The flow's intake task and `chatgraft intake` both call it, each holding the project."""
    layout = Layout(dvc.root)
    legacy = dvc.root / "data" / "incoming.dvc"
    if legacy.exists():  # projects from before the inbox stage tracked the snapshot with `dvc add`
        legacy.unlink()
        logger.warning("data/incoming is now the inbox stage's output: removed data/incoming.dvc (commit that)")
    intake = take_inbox(inbox_files(source, dvc.root) if source else iter(()), layout.incoming)
    write_intake_report(intake, source or "", layout.intake_report)
    dvc.commit(INTAKE_STAGE)
    if intake.skipped:
        logger.warning("left in the inbox (not .txt, .jsonl or .parquet): %s", intake.skipped)
    for name, reason in intake.refused.items():
        logger.warning("refused from the inbox, not taken: %r: %s", name, reason)
    return intake, (f"{len(intake.taken)} new file(s) from {source}: {', '.join(intake.taken)}" if intake.taken
                    else f"nothing new in {source}" if source else "no inbox to take from (flow.inbox)")
