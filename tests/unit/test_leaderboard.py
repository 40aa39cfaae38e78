"""The leaderboard stage: every candidate ranked, only merged models can win."""
import json
from pathlib import Path

import pytest

from pipelines.config import Bound, MergeParams, PromoteParams
from pipelines.leaderboard import build_leaderboard, candidate_names

POLICY = PromoteParams(guardrails={"termination_rate": Bound(min=0.9)})


def _write(metrics_dir: Path, scores: dict[str, tuple[float, float]]) -> None:
    metrics_dir.mkdir(exist_ok=True)
    for name, (accuracy, termination) in scores.items():
        (metrics_dir / f"{name}.json").write_text(
            json.dumps({"answer_accuracy": accuracy, "termination_rate": termination}))


def test_candidate_names_follow_the_ratios() -> None:
    assert candidate_names(MergeParams(ratios=[0.5, 1.0])) == ["base", "chat", "cp", "merged-0.5", "merged-1.0"]


def test_winner_is_the_best_eligible_merged_model(tmp_path: Path) -> None:
    _write(tmp_path, {"base": (0, 0), "chat": (0.99, 1.0), "cp": (0, 0), "merged-0.5": (0.9, 0.5),
                      "merged-1.0": (0.8, 1.0)})
    board = build_leaderboard(candidate_names(MergeParams()), tmp_path, POLICY, tmp_path / "board.json")
    assert board["winner"] == "merged-1.0"
    assert board["candidates"]["chat"]["rank"] == 1 and board["candidates"]["chat"]["role"] == "reference"
    assert board["candidates"]["merged-0.5"]["violations"] == ["termination_rate 0.5 < min 0.9"]
    assert json.loads((tmp_path / "board.json").read_text()) == board


def test_no_winner_when_no_merged_model_meets_the_guardrails(tmp_path: Path) -> None:
    _write(tmp_path, {"base": (0, 0), "chat": (0.5, 1.0), "cp": (0, 0), "merged-0.5": (0.9, 0.5),
                      "merged-1.0": (0.8, 0.2)})
    board = build_leaderboard(candidate_names(MergeParams()), tmp_path, POLICY, tmp_path / "board.json")
    assert board["winner"] is None and "no merged model" in board["reason"]


def test_missing_metrics_file_is_named(tmp_path: Path) -> None:
    _write(tmp_path, {"base": (0, 0)})
    with pytest.raises(FileNotFoundError, match=r"chat\.json: no metrics for candidate 'chat'"):
        build_leaderboard(candidate_names(MergeParams()), tmp_path, POLICY, tmp_path / "board.json")
