"""Outputs replace only what they own, appear whole, and get the modes the umask gives."""
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.atomic import (
    OUTPUT_MARKER, UMASK, OutputExistsError, atomic_dir, output_kind, staging_left_behind, write_json_atomic,
)


def _write_model(target: Path, kind: str = "merged model", **options: bool) -> None:
    with atomic_dir(target, kind, **options) as staging:
        (staging / "model.safetensors").write_bytes(b"weights")
        (staging / "sub").mkdir()
        (staging / "sub" / "config.json").write_text("{}")


def test_a_previous_output_of_the_same_kind_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / "out"
    _write_model(target)
    (target / "stale.txt").write_text("from the last merge")
    _write_model(target)
    assert output_kind(target) == "merged model"
    assert sorted(p.name for p in target.iterdir()) == [OUTPUT_MARKER, "model.safetensors", "sub"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left beside it


def test_an_empty_folder_is_taken(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    _write_model(tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize("other_kind", [None, "continually pretrained model"])
def test_a_folder_of_something_else_is_refused_and_kept(tmp_path: Path, other_kind: str | None) -> None:
    target = tmp_path / "models"
    if other_kind:
        _write_model(target, other_kind)
    else:
        (target / "another-model").mkdir(parents=True)
        (target / "notes.txt").write_text("mine")
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    ran = []
    with pytest.raises(OutputExistsError) as error:
        with atomic_dir(target, "merged model") as staging:
            ran.append(staging)
    assert not ran  # refused before any work
    message = str(error.value)
    assert str(target) in message and "--overwrite" in message
    assert ("notes.txt" in message) if other_kind is None else ("continually pretrained model" in message)
    assert {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()} == before


def test_a_file_in_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("a file")
    with pytest.raises(OutputExistsError, match="not a folder chatgraft wrote"):
        _write_model(tmp_path / "out")
    assert (tmp_path / "out").read_text() == "a file"


def test_overwrite_replaces_what_is_there(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    _write_model(tmp_path / "out", overwrite=True)
    assert not (tmp_path / "out" / "notes.txt").exists() and output_kind(tmp_path / "out") == "merged model"


def test_a_failed_block_leaves_the_previous_output(tmp_path: Path) -> None:
    _write_model(tmp_path / "out")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out", "merged model") as staging:
            (staging / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("killed")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# a stage command halfway through writing an output: the handler every command installs, then a block that waits
HALFWAY = """
import sys, time
from pathlib import Path
from pipelines.atomic import atomic_dir, exit_cleanly_on_sigterm
exit_cleanly_on_sigterm()
with atomic_dir(Path(sys.argv[1]), "merged model") as staging:
    (staging / "model.safetensors").write_bytes(b"half")
    print("writing", flush=True)
    time.sleep(60)
"""


def test_sigterm_halfway_leaves_no_staging(tmp_path: Path) -> None:
    """What the flow and schedulers send: the half-written folder goes, and nothing appears in its place."""
    process = subprocess.Popen([sys.executable, "-c", HALFWAY, str(tmp_path / "out")], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "writing"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # the staging, while it writes
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_the_staging_a_killed_writer_left_is_found(tmp_path: Path) -> None:
    """SIGKILL cannot be handled: the staging stays until the next run finds it, and only it is found."""
    (tmp_path / ".out.notes.txt").write_text("mine")  # the user's, and another output's staging
    (tmp_path / ".outer.abcdefgh").mkdir()
    process = subprocess.Popen([sys.executable, "-c", HALFWAY, str(tmp_path / "out")], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "writing"
    process.kill()
    process.wait(timeout=30)
    left = staging_left_behind(tmp_path / "out")
    assert len(left) == 1 and (left[0] / "model.safetensors").read_bytes() == b"half"
    assert staging_left_behind(tmp_path / "missing" / "out") == []


def test_outputs_follow_the_umask(tmp_path: Path) -> None:
    """Temporary files and folders are created private (0600 / 0700); the outputs they become are not."""
    _write_model(tmp_path / "out")
    write_json_atomic(tmp_path / "metrics.json", {"a": 1})
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "out", *(tmp_path / "out").rglob("*"),
                                                              tmp_path / "metrics.json"]}
    folders, files = 0o777 & ~UMASK, 0o666 & ~UMASK  # 0755 and 0644 under the usual umask 022
    assert modes["out"] == modes["sub"] == folders
    assert modes["model.safetensors"] == modes["metrics.json"] == modes[OUTPUT_MARKER] == files


def test_files_a_writer_made_private_follow_the_umask(tmp_path: Path) -> None:
    """safetensors writes its files 0600, whatever the umask: a folder output opens them up (the execute bit kept),
    and leaves a link's target alone."""
    import torch
    from safetensors.torch import save_file

    private = tmp_path / "theirs.txt"
    private.write_text("not ours")
    private.chmod(0o600)
    with atomic_dir(tmp_path / "out", "aligned model") as staging:
        save_file({"w": torch.zeros(2)}, staging / "model.safetensors")
        (staging / "run.sh").write_text("#!/bin/sh\n")
        (staging / "run.sh").chmod(0o700)
        (staging / "deep").mkdir(mode=0o700)
        (staging / "deep" / "link").symlink_to(private)
    mode = lambda path: stat.S_IMODE(path.lstat().st_mode)  # noqa: E731
    out = tmp_path / "out"
    assert mode(out / "model.safetensors") == 0o666 & ~UMASK  # 0644 under umask 022
    assert mode(out / "run.sh") == mode(out / "deep") == 0o777 & ~UMASK
    assert mode(private) == 0o600
