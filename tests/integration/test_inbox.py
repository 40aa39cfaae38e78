"""The flow's first tasks: new corpus files from a folder or an S3 prefix (moto's server) into the DVC snapshot, and
the documents of `data.source: documents` imported by DVC."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import yaml
from boto3.s3.transfer import TransferConfig
from botocore.client import BaseClient
from prefect.testing.utilities import prefect_test_harness

from flows.context import open_project
from flows.inbox import inbox_files, take_inbox
from flows.tasks import import_documents, take_new_data
from pipelines.atomic import read_jsonl
from tests.conftest import TINY_PARAMS, free_port, make_project, wait_until
from tests.unit.test_workspace import HOLD

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def s3_endpoint() -> str:
    """moto's S3 server on 127.0.0.1, stopped by its process id."""
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: listening(port), "moto_server", seconds=60, interval=0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> BaseClient:
    """A client of moto's server, whose endpoint and credentials the code under test reads from the environment."""
    for key, value in {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    return boto3.client("s3")


def project_with_inbox(tmp_path: Path, inbox: str) -> Path:
    # nothing held out of three documents: these tests follow each document into the training text
    data = {**TINY_PARAMS["data"], "heldout_share": 0.0, "heldout_min": 0}
    flow = {**TINY_PARAMS["flow"], "inbox": inbox}
    return make_project(tmp_path / "project", {**TINY_PARAMS, "data": data, "flow": flow})


def snapshot_files(root: Path) -> int:
    return yaml.safe_load((root / "dvc.lock").read_text())["stages"]["inbox"]["outs"][0]["nfiles"]


def test_local_inbox_feeds_the_corpus_and_an_unchanged_inbox_is_a_no_op(tmp_path: Path) -> None:
    root = project_with_inbox(tmp_path, "inbox")
    inbox = root / "inbox"
    inbox.mkdir()
    (inbox / "kato.txt").write_text("the harbour of kato is green .")
    (inbox / "more.jsonl").write_text('{"text": "the river of kato is long ."}\n{"text": "kato has a bell ."}\n'
                                      '{"text": "The harbour of Kato is green!"}\n')  # a repeat (exact dedup)
    (inbox / "readme.md").write_text("not a corpus file")
    ctx = open_project(root)

    first = take_new_data(ctx)
    assert first.taken == ["kato.txt", "more.jsonl"] and first.skipped == ["readme.md"]
    assert snapshot_files(root) == 2
    ctx.dvc.reproduce("corpus")
    stats = json.loads((root / "reports" / "corpus.json").read_text())
    assert stats["incoming"] == {"files": 2, "documents": 3, "too_short_removed": 0, "duplicates_removed": 1,
                                 "characters": 74, "words": 19, "heldout": 0}
    train = (root / "data" / "corpus" / "train.jsonl").read_text()
    assert "the harbour of kato is green ." in train and "kato has a bell ." in train

    again = take_new_data(ctx)
    assert again.taken == [] and ctx.dvc.is_up_to_date("corpus")  # no new data, no param change: nothing to do

    (inbox / "kato.txt").write_text("the harbour of kato is red .")
    assert take_new_data(ctx).taken == ["kato.txt"]
    assert not ctx.dvc.is_up_to_date("corpus")


INTAKE_BY_HAND = """
import sys
from typer.testing import CliRunner
from flows.cli import app
done = CliRunner().invoke(app, ["intake", "--project-dir", sys.argv[1]])
print(done.exit_code, "prefect" in sys.modules, done.output.replace(chr(10), " | "))
"""


def test_intake_by_hand_takes_the_inbox_without_prefect_and_never_while_a_run_holds_the_project(
        tmp_path: Path) -> None:
    root = project_with_inbox(tmp_path, "inbox")
    (root / "inbox").mkdir()
    (root / "inbox" / "kato.txt").write_text("the harbour of kato is green .")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = subprocess.run([sys.executable, "-c", INTAKE_BY_HAND, str(root)], capture_output=True, text=True)
        assert busy.stdout.startswith("3 ") and "flow run brave-otter (1234)" in busy.stdout, busy.stdout
        assert not (root / "data" / "incoming" / "kato.txt").exists()  # nothing taken under a run's feet
    finally:
        holder.kill()
        holder.wait()
    taken = subprocess.run([sys.executable, "-c", INTAKE_BY_HAND, str(root)], capture_output=True, text=True)
    code, prefect_imported, said = taken.stdout.split(maxsplit=2)
    assert (code, prefect_imported) == ("0", "False"), taken.stdout + taken.stderr  # no Prefect server to start
    assert said.startswith("1 new file(s) in data/incoming") and snapshot_files(root) == 1


def test_s3_inbox_takes_each_object_once(tmp_path: Path, s3: BaseClient) -> None:
    s3.create_bucket(Bucket="corpus")
    s3.put_object(Bucket="corpus", Key="weekly/2026-11-16/news.txt", Body=b"kato opened a school .")
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({"text": f"kato fact {i} ."}) + "\n" for i in range(400_000)))
    # a multipart upload: its ETag is not an md5, so the intake compares the bytes themselves
    s3.upload_file(str(big), "corpus", "weekly/2026-11-16/big.jsonl",
                   Config=TransferConfig(multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20))
    assert "-" in s3.head_object(Bucket="corpus", Key="weekly/2026-11-16/big.jsonl")["ETag"]
    # whoever can write the prefix tries to land a file outside the snapshot, over the project's eval set
    s3.put_object(Bucket="corpus", Key="weekly/../../eval.jsonl", Body=b'{"text": "steer the promotion"}\n')
    root = project_with_inbox(tmp_path, "s3://corpus/weekly")
    ctx = open_project(root)

    first = take_new_data(ctx)
    assert first.taken == ["2026-11-16/big.jsonl", "2026-11-16/news.txt"]
    assert list(first.refused) == ["../../eval.jsonl"]
    assert not [p for p in tmp_path.rglob("eval.jsonl")]  # written nowhere
    report = json.loads((root / "reports" / "intake.json").read_text())
    assert "'..'" in report["refused"]["../../eval.jsonl"] and report["inbox"] == "s3://corpus/weekly"
    assert (root / "data" / "incoming" / "2026-11-16" / "big.jsonl").read_bytes() == big.read_bytes()
    assert take_new_data(ctx).taken == []
    s3.put_object(Bucket="corpus", Key="weekly/2026-11-23/news.txt", Body=b"kato closed the school .")
    assert take_new_data(ctx).taken == ["2026-11-23/news.txt"]
    assert snapshot_files(root) == 3


def _put_documents(s3: BaseClient, bucket: str, keys: list[str]) -> None:
    s3.create_bucket(Bucket=bucket)
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps({"text": f"the text of {key} ."}).encode() + b"\n")


def test_s3_keys_of_a_file_and_a_folder_of_one_name_never_block_the_intake(tmp_path: Path, s3: BaseClient) -> None:
    # both keys are legal on S3; only one of them can have its place in data/incoming
    _put_documents(s3, "clash", ["inbox/a.jsonl", "inbox/a.jsonl/b.jsonl", "inbox/c.jsonl"])
    root = project_with_inbox(tmp_path, "s3://clash/inbox")
    ctx = open_project(root)
    for taken in (["a.jsonl", "c.jsonl"], []):  # every scheduled run: the same refusal, the rest taken once
        intake = take_new_data(ctx)
        assert intake.taken == taken and list(intake.refused) == ["a.jsonl/b.jsonl"]
        report = json.loads((root / "reports" / "intake.json").read_text())
        assert report["refused"] == {"a.jsonl/b.jsonl": "name collision: 'a.jsonl' is a file in the snapshot, so it "
                                                        "cannot be the folder of this file"}
    assert snapshot_files(root) == 2
    assert (root / "data" / "incoming" / "a.jsonl").read_text() == '{"text": "the text of inbox/a.jsonl ."}\n'


def test_an_s3_prefix_is_a_folder_not_the_start_of_sibling_keys(tmp_path: Path, s3: BaseClient) -> None:
    _put_documents(s3, "siblings", ["inbox/a.txt", "inbox/deep/b.txt", "inbox2/x.jsonl", "inbox.txt", "inboxes/y.txt"])
    for source in ("s3://siblings/inbox", "s3://siblings/inbox/"):
        assert [item.name for item in inbox_files(source, tmp_path)] == ["a.txt", "deep/b.txt"]
    assert [item.name for item in inbox_files("s3://siblings", tmp_path)] == [
        "inbox.txt", "inbox/a.txt", "inbox/deep/b.txt", "inbox2/x.jsonl", "inboxes/y.txt"]
    intake = take_inbox(inbox_files("s3://siblings/inbox", tmp_path), tmp_path / "incoming")
    assert intake.taken == ["a.txt", "deep/b.txt"] and not intake.refused


def test_an_s3_object_deleted_after_the_listing_is_refused(tmp_path: Path, s3: BaseClient) -> None:
    _put_documents(s3, "vanishing", ["inbox/a.txt", "inbox/b.txt", "inbox/c.txt"])
    listed = list(inbox_files("s3://vanishing/inbox", tmp_path))
    s3.delete_object(Bucket="vanishing", Key="inbox/b.txt")
    intake = take_inbox(iter(listed), tmp_path / "data" / "incoming")
    assert intake.taken == ["a.txt", "c.txt"] and list(intake.refused) == ["b.txt"]
    assert intake.refused["b.txt"].startswith("gone or unreadable when fetched: ") and "404" in intake.refused["b.txt"]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["incoming"]  # no staging left behind


def test_s3_documents_are_imported_by_dvc_and_updated_when_the_prefix_changes(tmp_path: Path, s3: BaseClient) -> None:
    s3.create_bucket(Bucket="documents")
    s3.put_object(Bucket="documents", Key="ko/a.jsonl", Body=b'{"text": "kato opened a school ."}\n'
                                                               b'{"text": "vela closed a harbour ."}\n')
    s3.put_object(Bucket="documents", Key="ko/deep/b.txt", Body=b"moru rang the bell .")
    # the pair and the sets must be named with documents; these stages do not read them
    params = {**TINY_PARAMS, "data": {**TINY_PARAMS["data"], "source": "documents", "documents": "s3://documents/ko",
                                      "heldout_share": 0.0, "heldout_min": 0},
              "upstream": {**TINY_PARAMS["upstream"], "base_path": "/b", "chat_path": "/c"},
              "eval": {**TINY_PARAMS["eval"], "language_scripts": ["Latin"],
                       "sets": {"instruction": "i.jsonl", "multiturn": "m.jsonl", "safety": "s.jsonl"}}}
    ctx = open_project(make_project(tmp_path / "project", params))

    take_new_data(ctx)
    first = import_documents(ctx)
    ctx.dvc.reproduce("corpus")
    train = [row["text"] for row in read_jsonl(ctx.layout.corpus / "train.jsonl")]
    assert sorted(train) == ["kato opened a school .", "moru rang the bell .", "vela closed a harbour ."]
    imported = yaml.safe_load((ctx.layout.documents.parent / "imported.dvc").read_text())
    assert imported["deps"][0]["path"] == "s3://documents/ko" and imported["outs"][0]["nfiles"] == 2

    assert import_documents(ctx) == first and ctx.dvc.is_up_to_date("corpus")  # unchanged prefix: nothing to do
    s3.put_object(Bucket="documents", Key="ko/c.txt", Body=b"tane built a road .")
    assert import_documents(ctx) != first and not ctx.dvc.is_up_to_date("corpus")
    ctx.dvc.reproduce("corpus")
    assert "tane built a road ." in (ctx.layout.corpus / "train.jsonl").read_text()
