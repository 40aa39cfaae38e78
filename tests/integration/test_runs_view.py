"""`chatgraft runs` on a real DVC repository holding the project's params.yaml and saved experiments: every run
fits 120 columns, with its winner, score and only the params that differ from params.yaml now."""
import sys
from pathlib import Path

from flows.dvc_project import DvcProject
from flows.params_file import apply_overrides
from tests.conftest import REPO, run

# the leaderboard stage's DVC metric, from the params: each run's winner and score differ with them
DVC_YAML = """stages:
  leaderboard:
    cmd: >-
      python -c "import json, os, yaml; p = yaml.safe_load(open('params.yaml')); os.makedirs('metrics', exist_ok=True);
      r = p['merge']['ratios'][-1]; json.dump({'winner': {'name': 'merged-%s' % r, 'answer_accuracy': r / 3}},
      open('metrics/leaderboard.json', 'w'))"
    params: [merge, data]
    metrics:
      - metrics/leaderboard.json: {cache: false}
"""
LONG_PATH = "/srv/teams/language-models/corpora/korean-news-2026-11/cleaned-and-deduplicated/documents"
SECOND = ["merge.ratios=[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2]", f"data.documents={LONG_PATH}",
          "merge.method=ties", "merge.density=0.3", "cp.steps=800"]


def _saved_run(project: DvcProject, name: str, overrides: list[str]) -> None:
    if overrides:
        apply_overrides(project.root / "params.yaml", overrides)
    run([sys.executable, "-m", "dvc", "repro", "--quiet"], project.root)
    project.save_experiment(name)


def test_runs_fit_120_columns_and_show_what_changed(tmp_path: Path) -> None:
    run(["git", "init", "-q"], tmp_path)
    run([sys.executable, "-m", "dvc", "init", "-q"], tmp_path)
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    run(["git", "add", "-A"], tmp_path)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm", "init"], tmp_path)
    project = DvcProject(tmp_path)
    _saved_run(project, "the-first-run-of-a-long-named-flow", [])
    _saved_run(project, "second-run", SECOND)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    apply_overrides(tmp_path / "params.yaml", ["merge.ratios=[1.0]"])  # params.yaml now: neither run's

    shown = run([str(Path(sys.executable).parent / "chatgraft"), "runs", "--project-dir", str(tmp_path)], tmp_path)
    lines = shown.splitlines()
    assert max(len(line) for line in lines) <= 120, shown
    assert lines[0].split()[:4] == ["run", "when", "winner", "answer_accuracy"]
    column = lines[0].index("params that differ")
    starts = [i for i, line in enumerate(lines) if i and not line.startswith(" ")]  # a run's first line
    first, second = ("\n".join(lines[a:b]) for a, b in zip(starts, [*starts[1:], len(lines)]))
    assert first.startswith("the-first-run") and "merged-1.0" in first and "0.3333" in first  # winner and score
    changed = ["".join(line[column:] for line in run.splitlines()).replace(" ", "") for run in (first, second)]
    assert changed[0] == "merge.ratios=[0.5,1.0]"  # the params that are as params.yaml now are left out
    for override in SECOND:
        assert override in changed[1], shown  # wrapped within its column, never cut
    assert "merged-1.2" in second and "0.4" in second
