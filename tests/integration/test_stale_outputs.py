"""Outputs no stage declares any more, in a real DVC repository: reported, listed by a dry run, removed by
`chatgraft clean` when DVC's cache holds them, and nothing reruns for it."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.dvc_project import DvcProject
from flows.stale_outputs import clean_stale_outputs, recorded_note, stale_outputs_note
from tests.conftest import run
from tests.unit.test_workspace import HOLD

MAKE = """import json, os, sys
item = sys.argv[1]
os.makedirs(f"models/m/a-{item}", exist_ok=True)
open(f"models/m/a-{item}/weights", "w").write(item * 1000)
os.makedirs("metrics/m", exist_ok=True)
json.dump({"score": float(item)}, open(f"metrics/m/m-{item}.json", "w"))
"""
BOARD = """import json, yaml
names = [f"metrics/m/m-{item}.json" for item in yaml.safe_load(open("params.yaml"))["items"]]
json.dump({name: json.load(open(name)) for name in names}, open("board.json", "w"))
"""
# `board` reads the scores its params name, from a folder dep: like the leaderboard and metrics/eval
DVC_YAML = """stages:
  make:
    foreach: ${items}
    do:
      cmd: python make.py ${item}
      deps: [make.py]
      outs:
        - models/m/a-${item}
      metrics:
        - metrics/m/m-${item}.json: {cache: false}
  board:
    cmd: python board.py
    deps: [board.py, metrics]
    params: [items]
    outs:
      - board.json: {cache: false}
"""


def _repro(root: Path, items: str) -> None:
    (root / "params.yaml").write_text(f"items: {items}\n")
    run([sys.executable, "-m", "dvc", "repro", "--quiet"], root)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DvcProject:
    """Items 1 and 2 made, then item 2 dropped and the pipeline run again: its model and score are left."""
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    run(["git", "init", "-q"], tmp_path)
    run([sys.executable, "-m", "dvc", "init", "-q"], tmp_path)
    for name, text in (("dvc.yaml", DVC_YAML), ("make.py", MAKE), ("board.py", BOARD)):
        (tmp_path / name).write_text(text)
    _repro(tmp_path, "[1, 2]")
    _repro(tmp_path, "[1]")
    (tmp_path / "models" / "m" / "a-mine").mkdir()  # a folder a person put there: DVC's cache lacks it
    (tmp_path / "models" / "m" / "a-mine" / "notes.txt").write_text("mine")
    (tmp_path / "models" / "m" / ".a-1.k2j4h8sd").mkdir()  # a killed writer's staging: recovery reports it
    return DvcProject(tmp_path)


def _files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if not {".dvc", ".git", ".chatgraft"} & set(p.parts)}


def test_a_dropped_items_outputs_are_reported_and_cleaned_and_nothing_reruns(project: DvcProject) -> None:
    root = project.root
    assert not project.out_of_date()
    note = stale_outputs_note(root)
    assert note and note.startswith("3 outputs no stage in dvc.yaml declares")
    assert "models/m/a-2" in note and "metrics/m/m-2.json" in note and "`chatgraft clean --dry-run`" in note

    before = _files(root)
    dry = CliRunner().invoke(app, ["clean", "--dry-run", "--project-dir", str(root)])
    assert dry.exit_code == 0, dry.output
    assert _files(root) == before  # a dry run removes nothing
    lines = dry.output.splitlines()
    assert lines[0] == "Would remove 2 outputs no stage in dvc.yaml declares any more (1.01kB):"
    assert lines[1].startswith("  metrics/m/m-2.json") and lines[2] == "  models/m/a-2  1.00kB  (in DVC's cache)"
    assert "models/m/a-mine" in lines[4] and "Nothing was removed (--dry-run)." in dry.output

    done = CliRunner().invoke(app, ["clean", "--project-dir", str(root)])
    assert done.exit_code == 0, done.output
    assert before - _files(root) == {Path("models/m/a-2"), Path("models/m/a-2/weights"), Path("metrics/m/m-2.json")}
    assert "dvc exp apply" in done.output and "Recorded again in dvc.lock, nothing to rerun: board" in done.output
    assert not project.out_of_date()  # `dvc status`: the folder board depends on lost only what it never read
    assert (root / "models" / "m" / "a-mine" / "notes.txt").exists()  # not DVC's: kept, said
    assert (root / "models" / "m" / ".a-1.k2j4h8sd").exists()  # not an output
    assert clean_stale_outputs(project).removed == []  # a second clean has nothing to do


def test_the_note_is_recorded_for_status_until_what_it_was_found_from_changes(project: DvcProject) -> None:
    """`chatgraft status` prints the recorded note without DVC's import while dvc.yaml, params.yaml and the
    outputs' folders are as they were; a change to any of them makes it find the note again."""
    root = project.root
    assert recorded_note(root) == (False, None)  # nothing recorded yet
    note = stale_outputs_note(root)
    assert recorded_note(root) == (True, note)
    reader = ("import sys; from pathlib import Path; from flows.stale_outputs import recorded_note; "
              f"known, _ = recorded_note(Path({str(root)!r})); print(known, 'dvc' in sys.modules)")
    assert run([sys.executable, "-c", reader], Path(__file__).parents[2]).split() == ["True", "False"]

    (root / "params.yaml").write_text("items: [1, 2]\n")  # item 2 declared again
    assert recorded_note(root) == (False, None)
    assert stale_outputs_note(root) != note and recorded_note(root)[0]
    (root / "params.yaml").write_text("items: [1]\n")
    stale_outputs_note(root)
    run(["rm", "-r", "models/m/a-mine"], root)  # an output's folder went
    assert recorded_note(root) == (False, None)
    assert "a-mine" not in stale_outputs_note(root)


def test_a_stage_out_of_date_before_the_cleaning_is_left_to_rerun(project: DvcProject) -> None:
    root = project.root
    (root / "params.yaml").write_text("items: [1, 3]\n")  # not run yet: board's params changed
    cleaning = clean_stale_outputs(project)
    assert [s.path for s in cleaning.removed] == [Path("metrics/m/m-2.json"), Path("models/m/a-2")]
    assert cleaning.recorded == [] and "board" in project.out_of_date()  # still to run, never recorded as run


def test_clean_refuses_while_a_run_holds_the_project(project: DvcProject) -> None:
    root = project.root
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _files(root)
        refused = CliRunner().invoke(app, ["clean", "--project-dir", str(root)])
        assert refused.exit_code == 3 and "flow run brave-otter (1234)" in refused.output
        assert _files(root) == before
    finally:
        holder.kill()
        holder.wait()
