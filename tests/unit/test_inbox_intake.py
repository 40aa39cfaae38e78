"""Intake from the inbox: names that would leave the snapshot, links out of the inbox and unreadable files are
refused and reported, never read into or written outside data/incoming; a name that collides with the snapshot and
a file gone or unreadable when fetched are refused too, and the intake goes on with the rest."""
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from flows.inbox import InboxFile, inbox_files, take_inbox, unsafe_name, write_intake_report

DOC = b'{"text": "a document"}\n'


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


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _no_staging_left(snapshot: Path) -> bool:
    return sorted(p.name for p in snapshot.parent.iterdir()) == ["incoming"]


@pytest.mark.parametrize("first, then, reason", [
    ("a.jsonl", "a.jsonl/b.jsonl", "name collision: 'a.jsonl' is a file in the snapshot"),
    ("a.jsonl/b.jsonl", "a.jsonl", "name collision: 'a.jsonl' is a folder in the snapshot"),
])
def test_a_file_and_a_folder_of_one_name_across_two_intakes_are_refused(
        tmp_path: Path, first: str, then: str, reason: str) -> None:
    inbox, snapshot = tmp_path / "inbox", tmp_path / "data" / "incoming"
    _write(inbox / first, DOC)
    assert take_inbox(inbox_files("inbox", tmp_path), snapshot).taken == [first]
    shutil.rmtree(inbox)
    _write(inbox / then, b'{"text": "the other side of the name"}\n')
    _write(inbox / "z" / "later.txt", b"listed after the collision")
    intake = take_inbox(inbox_files("inbox", tmp_path), snapshot)
    assert intake.taken == ["z/later.txt"] and list(intake.refused) == [then]
    assert intake.refused[then].startswith(reason)
    assert _tree(snapshot) == {first: DOC, "z/later.txt": b"listed after the collision"}
    assert _no_staging_left(snapshot)


def test_a_file_and_a_folder_of_one_name_in_one_listing_the_first_is_taken(tmp_path: Path) -> None:
    snapshot = tmp_path / "data" / "incoming"
    files = [_remote("a.jsonl", DOC), _remote("a.jsonl/b.jsonl", DOC), _remote("c.txt", b"more text")]
    intake = take_inbox(iter(files), snapshot)
    assert intake.taken == ["a.jsonl", "c.txt"]
    assert intake.refused == {"a.jsonl/b.jsonl": "name collision: 'a.jsonl' is a file in the snapshot, so it "
                                                 "cannot be the folder of this file"}
    assert _tree(snapshot) == {"a.jsonl": DOC, "c.txt": b"more text"}


def test_two_names_of_one_place_in_the_snapshot_the_first_is_taken_every_time(tmp_path: Path) -> None:
    inbox, snapshot = tmp_path / "inbox", tmp_path / "data" / "incoming"
    (snapshot / "x").mkdir(parents=True)
    (snapshot / "y").symlink_to("x")  # a link inside the snapshot: y/a.txt is x/a.txt
    _write(inbox / "x" / "a.txt", b"the text of x")
    _write(inbox / "y" / "a.txt", b"the text of y")
    for taken in (["x/a.txt"], []):
        intake = take_inbox(inbox_files("inbox", tmp_path), snapshot)
        assert intake.taken == taken and list(intake.refused) == ["y/a.txt"]
        assert "its place in the snapshot is that of 'x/a.txt'" in intake.refused["y/a.txt"]
        assert (snapshot / "x" / "a.txt").read_bytes() == b"the text of x"


def _deleting_after_first(files: Iterator[InboxFile], path: Path) -> Iterator[InboxFile]:
    """The listing, with `path` removed once its first file was taken: gone before the listing reaches it."""
    for index, item in enumerate(files):
        yield item
        if index == 0:
            path.unlink()


def _three_files(inbox: Path) -> None:
    for name in ("a.txt", "b.txt", "c.txt"):
        _write(inbox / name, f"text of {name}".encode())


def test_a_local_file_gone_between_listing_and_copy_is_refused(tmp_path: Path) -> None:
    inbox, snapshot = tmp_path / "inbox", tmp_path / "data" / "incoming"
    _three_files(inbox)
    listed = list(inbox_files("inbox", tmp_path))
    (inbox / "b.txt").unlink()
    intake = take_inbox(iter(listed), snapshot)
    assert intake.taken == ["a.txt", "c.txt"]
    assert intake.refused == {"b.txt": "gone or unreadable when fetched: No such file or directory"}
    assert _tree(snapshot) == {"a.txt": b"text of a.txt", "c.txt": b"text of c.txt"} and _no_staging_left(snapshot)


def test_a_local_file_gone_before_the_listing_reads_it_is_refused(tmp_path: Path) -> None:
    inbox, snapshot = tmp_path / "inbox", tmp_path / "data" / "incoming"
    _three_files(inbox)
    intake = take_inbox(_deleting_after_first(inbox_files("inbox", tmp_path), inbox / "b.txt"), snapshot)
    assert intake.taken == ["a.txt", "c.txt"]
    assert intake.refused == {"b.txt": "gone or unreadable when listed: No such file or directory"}
    assert _tree(snapshot) == {"a.txt": b"text of a.txt", "c.txt": b"text of c.txt"}


def test_a_local_file_without_read_permission_is_refused(tmp_path: Path) -> None:
    inbox, snapshot = tmp_path / "inbox", tmp_path / "data" / "incoming"
    _write(inbox / "a.txt", b"readable")
    _write(inbox / "secret.txt", b"not for us")
    (inbox / "secret.txt").chmod(0)
    if os.access(inbox / "secret.txt", os.R_OK, effective_ids=True):
        pytest.skip("this process reads a file whatever its mode (root with CAP_DAC_OVERRIDE)")
    intake = take_inbox(inbox_files("inbox", tmp_path), snapshot)
    assert intake.taken == ["a.txt"] and intake.refused == {"secret.txt": "gone or unreadable when listed: "
                                                                          "Permission denied"}


def test_a_pipe_in_a_local_inbox_is_refused_not_read(tmp_path: Path) -> None:
    inbox, snapshot = tmp_path / "inbox", tmp_path / "data" / "incoming"
    _write(inbox / "a.txt", b"a document")
    os.mkfifo(inbox / "pipe.jsonl")  # reading it would wait for a writer forever
    intake = take_inbox(inbox_files("inbox", tmp_path), snapshot)
    assert intake.taken == ["a.txt"]
    assert intake.refused == {"pipe.jsonl": "gone or unreadable when listed: not a regular file (a pipe, a socket "
                                            "or a device)"}


def _failing(name: str, error: Exception) -> InboxFile:
    def fetch(out: Path) -> None:
        out.write_bytes(b"half an obj")  # what a fetch cut off leaves
        raise error
    return InboxFile(name, None, fetch)


@pytest.mark.parametrize("error, reason", [
    (ClientError({"Error": {"Code": "NoSuchKey", "Message": "gone"}}, "GetObject"), "NoSuchKey"),
    (ClientError({"Error": {"Code": "404", "Message": "Not Found"}}, "HeadObject"), "(404)"),
    (ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "GetObject"), "AccessDenied"),
    (PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
])
def test_an_object_that_cannot_be_fetched_is_refused_and_the_rest_taken(
        tmp_path: Path, error: Exception, reason: str) -> None:
    snapshot = tmp_path / "data" / "incoming"
    intake = take_inbox(iter([_remote("a.txt", b"first"), _failing("b.txt", error), _remote("c.txt", b"last")]),
                        snapshot)
    assert intake.taken == ["a.txt", "c.txt"] and list(intake.refused) == ["b.txt"]
    assert intake.refused["b.txt"].startswith("gone or unreadable when fetched: ") and reason in intake.refused["b.txt"]
    assert _tree(snapshot) == {"a.txt": b"first", "c.txt": b"last"} and _no_staging_left(snapshot)


@pytest.mark.parametrize("error", [
    NoCredentialsError(),
    EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
    ClientError({"Error": {"Code": "ExpiredToken", "Message": "expired"}}, "GetObject"),
    ClientError({"Error": {"Code": "InternalError", "Message": "try again"}}, "GetObject"),
    OSError(errno.ENOSPC, "No space left on device"),
])
def test_a_problem_of_the_whole_inbox_or_disk_raises(tmp_path: Path, error: Exception) -> None:
    snapshot = tmp_path / "data" / "incoming"
    with pytest.raises(type(error)):
        take_inbox(iter([_failing("a.txt", error), _remote("b.txt", b"never reached")]), snapshot)
    assert _tree(snapshot) == {} and _no_staging_left(snapshot)
