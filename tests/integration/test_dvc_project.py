"""The DVC runner against a real DVC repository: up-to-date detection, lock hashes, and failing stages."""
import sys
from pathlib import Path

import pytest

from flows.dvc_project import DvcProject, PipelineStage, StageFailed
from tests.conftest import run

DVC_YAML = """stages:
  make:
    cmd: python -c "open('out.txt', 'w').write('hello')"
    outs: [out.txt]
  broken:
    cmd: python -c "raise SystemExit(3)"
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


def test_stages_in_the_files_order_with_their_gpu_mark(project: DvcProject) -> None:
    assert project.stages() == [PipelineStage("make", False), PipelineStage("broken", False),
                                PipelineStage("sweep@1", True), PipelineStage("sweep@2", True)]
