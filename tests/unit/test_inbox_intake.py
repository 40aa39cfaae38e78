"""Intake from the inbox: names that would leave the snapshot, links out of the inbox and unreadable files are
refused and reported, never read into or written outside data/incoming."""
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.inbox import InboxFile, inbox_files, take_inbox, unsafe_name, write_intake_report


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _remote(name: str, data: bytes) -> InboxFile:
    """An inbox file as an S3 listing gives it: a name taken from the key, fetched by writing its bytes."""
    return InboxFile(name, None, lambda out: out.write_bytes(data))


@pytest.mark.parametrize("name, reason", [
    ("../../evil.jsonl", "'..'"),
    ("docs/../../evil.jsonl", "'..'"),
    ("/etc/cron.d/evil.txt", "absolute"),
    ("./a.txt", "not a plain relative name"),
    ("a//b.txt", "not a plain relative name"),
    ("new\nline.txt", "control characters"),
    ("x" * 300 + ".txt", "longer than 255 bytes"),
    ("", "empty"),
])
def test_unsafe_names(name: str, reason: str) -> None:
    assert reason in unsafe_name(name)


@pytest.mark.parametrize("name", ["a.txt", "2026/11/docs.jsonl", "ko/위키.parquet", "..hidden.txt", "a..b.txt"])
def test_plain_names_are_fine(name: str) -> None:
    assert unsafe_name(name) is None


def test_an_s3_key_with_dot_dot_writes_nothing_outside_the_snapshot(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "eval.jsonl").write_text("the user's eval set\n")
    before = _tree(tmp_path)
    snapshot = project / "data" / "incoming"
    fetched = []
    files = [InboxFile("../../eval.jsonl", None, fetched.append),
             _remote("good.jsonl", b'{"text": "fresh text"}\n')]
    intake = take_inbox(iter(files), snapshot)
    assert intake.taken == ["good.jsonl"] and "'..'" in intake.refused["../../eval.jsonl"]
    assert not fetched  # never read
    assert _tree(tmp_path) == before | {"project/data/incoming/good.jsonl": b'{"text": "fresh text"}\n'}


def test_local_links_out_of_the_inbox_are_refused(tmp_path: Path) -> None:
    inbox, secrets = tmp_path / "inbox", tmp_path / "secrets"
    inbox.mkdir()
    secrets.mkdir()
    (secrets / "key.txt").write_text("private key")
    (inbox / "doc.txt").write_text("a document")
    (inbox / "stolen.txt").symlink_to(secrets / "key.txt")
    (inbox / "folder").symlink_to(secrets)
    (inbox / "loop.txt").symlink_to(inbox / "loop.txt")
    (inbox / "alias.txt").symlink_to(inbox / "doc.txt")  # inside the inbox: fine
    snapshot = tmp_path / "data" / "incoming"
    intake = take_inbox(inbox_files("inbox", tmp_path), snapshot)
    assert intake.taken == ["alias.txt", "doc.txt"]
    assert set(intake.refused) == {"stolen.txt", "folder", "loop.txt"}
    assert "outside the inbox" in intake.refused["stolen.txt"] and "outside the inbox" in intake.refused["folder"]
    assert "loop" in intake.refused["loop.txt"]
    assert _tree(snapshot) == {"alias.txt": b"a document", "doc.txt": b"a document"}


def _parquet(path: Path, column: str) -> bytes:
    pq.write_table(pa.table({column: ["some text"]}), path)
    return path.read_bytes()


def test_files_without_readable_documents_are_refused_with_the_reason(tmp_path: Path) -> None:
    files = {
        "binary.txt": b"\x89PNG\r\n\x1a\n\x00\x00\x00",
        "latin1.txt": "caf\u00e9".encode("latin-1"),
        "empty.txt": b"",
        "blank.jsonl": b"\n\n",
        "no-text.parquet": _parquet(tmp_path / "no-text.parquet", "body"),
        "not-parquet.parquet": b"PAR1 but not really",
        "bad-line.jsonl": b'{"text": "fine"}\n{"text": \n',
        "good.parquet": _parquet(tmp_path / "good.parquet", "text"),
    }
    snapshot = tmp_path / "data" / "incoming"
    intake = take_inbox(iter([_remote(name, data) for name, data in files.items()]), snapshot)
    assert intake.taken == ["good.parquet"]
    refused = intake.refused
    assert "binary data" in refused["binary.txt"] and "not UTF-8" in refused["latin1.txt"]
    assert refused["empty.txt"] == refused["blank.jsonl"] == "no documents (empty)"
    assert "no `text` column (columns: body)" in refused["no-text.parquet"]
    assert "not a readable parquet file" in refused["not-parquet.parquet"]
    assert refused["bad-line.jsonl"].startswith("bad-line.jsonl:2: not valid JSON")  # named as in the inbox
    assert sorted(p.name for p in snapshot.iterdir()) == ["good.parquet"]
    assert sorted(p.name for p in snapshot.parent.iterdir()) == ["incoming"]  # no staging left behind

    write_intake_report(intake, "s3://bucket/inbox", tmp_path / "reports" / "intake.json")
    report = json.loads((tmp_path / "reports" / "intake.json").read_text())
    assert report["inbox"] == "s3://bucket/inbox" and report["refused"] == refused
