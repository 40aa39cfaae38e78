"""The language world end to end, beside the default world's flow test: `data.world: language` with the keys it sets
left to it (but CP's token count, sized for the tiny corpus) through the whole flow with the fine-tuned-first family.
CP adds tokens for the target language, the merges give them rows (`overlap`), CP fine-tuned in the chat format and
merged with the chat vector keeps them, and is evaluated in the target language and ranked. Tiny settings; real DVC,
MLflow and Prefect (test server)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect.testing.utilities import prefect_test_harness
from transformers import AutoTokenizer

from flows.retrain import retrain
from flows.tracking.store import embedded_uri
from pipelines.atomic import read_jsonl
from pipelines.config import AUTO
from pipelines.layout import NEW_TOKENS, Layout
from pipelines.leaderboard import Leaderboard
from tests.conftest import ONE_BRANCH_PARAMS, TINY_PARAMS, make_project

pytestmark = pytest.mark.integration
FINETUNED = "finetuned-sft-merged-1.0"
NEW = 40  # the world's 200 are more than the tiny corpus has words for
PARAMS = {**ONE_BRANCH_PARAMS, "data": {**TINY_PARAMS["data"], "world": "language"},
          "cp": {**TINY_PARAMS["cp"], "new_tokens": NEW},
          "merge": {**ONE_BRANCH_PARAMS["merge"], "embedding_rows": AUTO},
          "finetune": {"methods": ["sft"], "ratios": [1.0]}}


@pytest.fixture(scope="module")
def language_run(tmp_path_factory: pytest.TempPathFactory):
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    with prefect_test_harness(server_startup_timeout=120):
        root = make_project(tmp_path_factory.mktemp("language") / "project", PARAMS)
        yield root, retrain(project_dir=str(root), stage_logs=True)
    mp.undo()


def test_the_fine_tuned_first_family_runs_and_is_ranked(language_run) -> None:
    root, result = language_run
    assert {"finetune@sft", "merge-finetuned@sft-1.0", "evaluate-finetuned@sft-1.0"} <= set(result.reproduced)
    board = Leaderboard.read(Layout(root).leaderboard_report)
    assert board.row(FINETUNED).metrics.keys() >= {"answer_accuracy", "language_consistency", "termination_rate"}
    assert result.version == "1"
    version = MlflowClient(embedded_uri(root), embedded_uri(root)).get_model_version("chatgraft-chat", "1")
    assert version.tags["candidate"] == result.winner


def test_cps_new_tokens_reach_the_fine_tuned_merge_with_rows_from_their_pieces(language_run) -> None:
    root, _ = language_run
    layout = Layout(root)
    added = json.loads((layout.cp_model / NEW_TOKENS).read_text())
    assert len(added) == NEW
    merged = AutoTokenizer.from_pretrained(layout.finetuned_merged_model("sft", "1.0"))
    chat = AutoTokenizer.from_pretrained(root / "models" / "upstream" / "chat")
    assert set(added) <= set(merged.get_vocab()) and merged.chat_template == chat.chat_template
    report = json.loads(layout.finetuned_merge_report("sft", "1.0").read_text())
    assert report["vocabulary"]["rows_with_piece_delta"] == NEW  # the world's row policy: overlap, not specials


def test_the_answers_are_scored_for_the_target_language(language_run) -> None:
    root, _ = language_run
    samples = read_jsonl(root / "reports" / "samples" / f"{FINETUNED}.jsonl")
    asked = [row for row in samples if row["suite"] in ("instruction", "multiturn")]
    assert asked and all("language" in row for row in asked)  # None: an answer with no word to tell it by
    assert all(row["language"] is None or 0.0 <= row["language"] <= 1.0 for row in asked)
    metrics = json.loads(Layout(root).eval_metrics(FINETUNED).read_text())
    assert 0.0 <= metrics["language_consistency"] <= 1.0
