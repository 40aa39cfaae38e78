"""The leaderboard stage: every candidate ranked, merged and aligned models compete, the references never win."""
import json
from pathlib import Path

import pytest

from pipelines.config import AlignParams, Bound, FinetuneParams, MergeParams, Params, PromoteParams
from pipelines.layout import Layout
from pipelines.leaderboard import Leaderboard, build_leaderboard, candidate_names

POLICY = PromoteParams(guardrails={"termination_rate": Bound(min=0.9)})
NO_ALIGN = Params(align=AlignParams(methods=[]), finetune=FinetuneParams(methods=[]))


def _write(root: Path, scores: dict[str, tuple[float, float]]) -> dict[str, Path]:
    files = {}
    for name, (accuracy, termination) in scores.items():
        files[name] = Layout(root).eval_metrics(name)
        files[name].parent.mkdir(parents=True, exist_ok=True)
        files[name].write_text(json.dumps({"answer_accuracy": accuracy, "termination_rate": termination}))
    return files


def test_candidate_names_follow_the_ratios_and_align_methods() -> None:
    params = Params(merge=MergeParams(ratios=[0.5, 1.0]), align=AlignParams(methods=["c-rlft"]))
    assert candidate_names(params) == ["base", "chat", "cp", "merged-0.5", "merged-1.0", "aligned-c-rlft",
                                       "finetuned-sft-merged-1.0"]
    assert candidate_names(NO_ALIGN)[-1] == "merged-1.0"


def test_aligned_metrics_live_apart_from_the_ones_align_reads(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    assert layout.eval_metrics("aligned-sft").parent == tmp_path / "metrics" / "eval" / "aligned"
    assert layout.eval_metrics("merged-1.0").parent == layout.merged_eval_metrics
    assert layout.eval_metrics("cp").parent == tmp_path / "metrics" / "eval"  # the references: read by no align
    assert not layout.speed_report("cp").is_relative_to(tmp_path / "metrics")  # a wall-clock figure: no DVC metric


def test_winner_is_the_best_eligible_merged_model(tmp_path: Path) -> None:
    files = _write(tmp_path, {"base": (0, 0), "chat": (0.99, 1.0), "cp": (0, 0), "merged-0.5": (0.9, 0.5),
                              "merged-1.0": (0.8, 1.0)})
    board = build_leaderboard(files, POLICY, tmp_path / "board.json", tmp_path / "summary.json")
    assert board.winner == "merged-1.0"
    assert board.rows[0].name == "chat" and board.row("chat").rank == 1 and board.row("chat").role == "reference"
    assert board.row("merged-0.5").violations == ["termination_rate 0.5 < min 0.9"]
    assert board.row("merged-0.5").metrics == {"answer_accuracy": 0.9, "termination_rate": 0.5}
    written = json.loads((tmp_path / "board.json").read_text())
    assert written["candidates"]["chat"] == {"rank": 1, "role": "reference", "eligible": True, "violations": [],
                                             "answer_accuracy": 0.99, "termination_rate": 1.0}
    assert Leaderboard.read(tmp_path / "board.json") == board  # what the flow reads is what the stage decided
    # the DVC metric: the winner and its primary metric, no copy of every model's scores
    assert json.loads((tmp_path / "summary.json").read_text()) == {
        "winner": {"name": "merged-1.0", "answer_accuracy": 0.8}}


def test_an_aligned_model_can_win(tmp_path: Path) -> None:
    files = _write(tmp_path, {"base": (0, 0), "merged-1.0": (0.8, 1.0), "aligned-sft": (0.85, 1.0),
                              "aligned-c-rlft": (0.95, 0.5)})
    board = build_leaderboard(files, POLICY, tmp_path / "board.json", tmp_path / "summary.json")
    assert board.winner == "aligned-sft"  # c-rlft scores higher but breaks a guardrail
    assert board.row("aligned-sft").role == "candidate"


def test_no_winner_when_no_merged_model_meets_the_guardrails(tmp_path: Path) -> None:
    files = _write(tmp_path, {"base": (0, 0), "chat": (0.5, 1.0), "cp": (0, 0), "merged-0.5": (0.9, 0.5),
                              "merged-1.0": (0.8, 0.2)})
    board = build_leaderboard(files, POLICY, tmp_path / "board.json", tmp_path / "summary.json")
    assert board.winner is None and "no merged, aligned or fine-tuned-then-merged model" in board.reason
    assert json.loads((tmp_path / "summary.json").read_text()) == {"winner": {"name": None}}


def test_missing_metrics_file_is_named(tmp_path: Path) -> None:
    files = {name: Layout(tmp_path).eval_metrics(name) for name in candidate_names(NO_ALIGN)}
    with pytest.raises(FileNotFoundError, match=r"base\.json: no metrics for candidate 'base'"):
        build_leaderboard(files, POLICY, tmp_path / "board.json", tmp_path / "summary.json")
