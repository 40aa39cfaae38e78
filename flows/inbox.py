"""The inbox: new corpus files dropped in a folder or an S3 prefix, taken into the DVC-versioned snapshot."""
from __future__ import annotations

import filecmp
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3

from pipelines.corpus.documents import DOCUMENT_SUFFIXES

# One inbox file: its path relative to the inbox, the md5 its source reports (None: unknown), how to fetch it.
InboxFile = tuple[str, str | None, Callable[[Path], None]]


@dataclass(frozen=True)
class Intake:
    """What one intake took into the snapshot, and what it left because chatgraft cannot read it."""

    taken: list[str]
    skipped: list[str]


def _local_files(folder: Path) -> Iterator[InboxFile]:
    if not folder.is_dir():
        raise FileNotFoundError(f"inbox folder {folder} does not exist (flow.inbox)")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with path.open("rb") as handle:
            md5 = hashlib.file_digest(handle, "md5").hexdigest()
        yield str(path.relative_to(folder)), md5, lambda out, path=path: shutil.copyfile(path, out)


def _s3_files(uri: str) -> Iterator[InboxFile]:
    """Objects under s3://bucket/prefix; the endpoint and credentials come from the environment
    (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...) as boto3 reads them."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key, etag = item["Key"], item["ETag"].strip('"')
            if key.endswith("/"):
                continue
            # a multipart upload's ETag is not the content's md5: such objects are fetched and compared
            md5 = None if "-" in etag else etag
            relative = key.removeprefix(prefix).lstrip("/") or Path(key).name
            yield relative, md5, lambda out, key=key: s3.download_file(bucket, key, str(out))


def inbox_files(source: str, root: Path) -> Iterator[InboxFile]:
    """The files of `source`: a folder (relative to `root`) or an s3://bucket/prefix."""
    return _s3_files(source) if source.startswith("s3://") else _local_files(root / source)


def _same_md5(path: Path, md5: str) -> bool:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest() == md5


def take_inbox(files: Iterator[InboxFile], snapshot: Path) -> Intake:
    """Copy each readable file the snapshot lacks, or holds with other bytes, into it; each appears whole
    (fetched beside the snapshot, then renamed in). Files already taken are left where they are."""
    snapshot.mkdir(parents=True, exist_ok=True)
    taken, skipped = [], []
    for relative, md5, fetch in files:
        if Path(relative).suffix not in DOCUMENT_SUFFIXES:
            skipped.append(relative)
            continue
        target = snapshot / relative
        if target.exists() and md5 is not None and _same_md5(target, md5):
            continue
        with tempfile.TemporaryDirectory(dir=snapshot.parent, prefix=".intake-") as staging:
            fetched = Path(staging) / "file"
            fetch(fetched)
            if target.exists() and filecmp.cmp(fetched, target, shallow=False):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(fetched, target)
        taken.append(relative)
    return Intake(taken, skipped)
