"""The DVC runner against a real DVC repository: up-to-date detection, lock hashes, and failing stages."""
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from flows.dvc_project import DvcProject, PipelineStage, StageFailed
from tests.conftest import run

DVC_YAML = """stages:
  make:
    cmd: python -c "open('out.txt', 'w').write('hello')"
    outs: [out.txt]
  broken:
    cmd: python -c "print('reading data/eval.jsonl'); raise SystemExit('data/eval.jsonl line 3, no key question')"
  bad-input:
    cmd: >-
      python -c "import sys; print('Traceback (most recent call last):'); sys.exit('chatgraft error: eval.jsonl:3: question: required')"
  score:
    cmd: python -c "import json; json.dump(dict(score=1), open('score.json', 'w'))"
    metrics:
      - score.json: {cache: false}
  sweep:
    foreach: [1, 2]
    do:
      cmd: python -c "print(${item})"
      meta: {gpu: true}
"""


@pytest.fixture
def project(tmp_path: Path) -> DvcProject:
    run(["git", "init", "-q"], tmp_path)
    run([sys.executable, "-m", "dvc", "init", "-q"], tmp_path)
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    return DvcProject(tmp_path)


def test_reproduce_then_up_to_date_with_hashes(project: DvcProject) -> None:
    assert not project.is_up_to_date("make")
    project.reproduce("make")
    assert project.is_up_to_date("make")
    assert project.lock_hashes("make") == {"out.txt": "5d41402abc4b2a76b9719d911017c592"}  # md5("hello")
    assert project.output_hash("out.txt") == "5d41402abc4b2a76b9719d911017c592"
    assert project.spec("make").files == [Path("out.txt")]


def test_failing_stage_raises_naming_it(project: DvcProject) -> None:
    with pytest.raises(StageFailed, match=r"`dvc repro --single-item broken` failed .*exit"):
        project.reproduce("broken")


def test_a_failing_stage_with_a_log_quotes_its_last_lines_and_names_the_file(project: DvcProject,
                                                                            tmp_path: Path) -> None:
    log = tmp_path / "logs" / "broken.log"
    log.parent.mkdir()
    with pytest.raises(StageFailed) as failed:
        project.reproduce("broken", log=log)
    message = str(failed.value)
    assert "data/eval.jsonl line 3, no key question" in message and message.endswith(f"(the whole output: {log})")
    assert "reading data/eval.jsonl" in log.read_text()  # the stage's output went to the file, whole


def test_an_error_in_the_users_input_is_shown_as_its_one_line(project: DvcProject, tmp_path: Path) -> None:
    log = tmp_path / "bad-input.log"
    with pytest.raises(StageFailed) as failed:
        project.reproduce("bad-input", log=log)
    assert str(failed.value) == ("`dvc repro --single-item bad-input`: eval.jsonl:3: question: required\n"
                                 f"(the whole output: {log})")
    assert "Traceback" in log.read_text()  # the whole story stays in the log


def test_stages_in_the_files_order_with_their_gpu_mark_and_outputs(project: DvcProject) -> None:
    assert project.stages() == [PipelineStage("make", False, outs=(Path("out.txt"),)), PipelineStage("broken", False),
                                PipelineStage("bad-input", False), PipelineStage("score", False, outs=(Path("score.json"),)),
                                PipelineStage("sweep@1", True), PipelineStage("sweep@2", True)]


GRAPH_YAML = """stages:
  report:
    cmd: cat a/x.txt b.txt > report.txt
    deps: [a, b.txt]
    outs: [report.txt]
  left:
    cmd: mkdir -p a && sleep 2 && echo left > a/x.txt && date +%s.%N > left.time
    outs: [a, left.time]
  right:
    cmd: sleep 2 && echo right > b.txt && date +%s.%N > right.time
    outs: [b.txt, right.time]
"""


def test_stages_follow_dvcs_graph_and_two_may_run_at_once(tmp_path: Path) -> None:
    """A stage written above the stages it reads runs after them, and names them; two stages neither reads from run
    side by side, each a `dvc repro` waiting for DVC's repository lock, and dvc.lock records all three."""
    run(["git", "init", "-q"], tmp_path)
    run([sys.executable, "-m", "dvc", "init", "-q"], tmp_path)
    (tmp_path / "dvc.yaml").write_text(GRAPH_YAML)
    project = DvcProject(tmp_path, wait_for_lock=True)
    stages = project.stages()
    assert [stage.name for stage in stages] == ["left", "right", "report"]
    assert stages[0].after == stages[1].after == () and set(stages[2].after) == {"left", "right"}
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(project.reproduce, ["left", "right"]))
    project.reproduce("report")
    left, right = ((tmp_path / f"{name}.time").read_text() for name in ("left", "right"))
    assert abs(float(left) - float(right)) < 1.5  # each slept 2 s: they ended together, so they ran together
    assert {"left", "right", "report"} <= set(project.locked_stages()) and not project.out_of_date()


def test_an_experiment_holds_the_uncached_outputs_and_leaves_the_branch_alone(project: DvcProject) -> None:
    root = project.root
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm", "init"], root)
    project.reproduce("make")
    project.reproduce("score")
    assert project.uncached_outputs() == ["score.json"]  # out.txt is DVC's (cached): never given to git
    before = run(["git", "status", "--porcelain"], root)
    project.save_experiment("first-run")
    assert run(["git", "log", "--format=%s"], root).splitlines() == ["init"]
    assert run(["git", "status", "--porcelain"], root) == before  # nothing staged, nothing committed
    saved = run(["git", "ls-tree", "-r", "--name-only", _experiment_ref(root, "first-run")], root).split()
    assert {"dvc.lock", "score.json", "dvc.yaml"} <= set(saved) and "out.txt" not in saved

    (root / ".git" / "index.lock").touch()  # left by a killed git command: said, naming the lock
    with pytest.raises(StageFailed, match="the index is locked"):
        project.save_experiment("second-run")


def _experiment_ref(root: Path, name: str) -> str:
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], root).split()
    (ref,) = [ref for ref in refs if ref.endswith(f"/{name}")]
    return ref
