"""Live training curves go to the MLflow run the environment names (MLFLOW_RUN_ID), and to no other run."""
from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from datasets import Dataset
from mlflow import MlflowClient
from mlflow.tracking._tracking_service import utils as mlflow_tracking_utils
from transformers import default_data_collator

from pipelines.config import CPParams
from pipelines.training import pack_texts, train_causal_lm
from tests.unit.merge_models import tiny_model, word_tokenizer


def test_live_curves_go_to_the_named_run_and_no_other_run_is_created(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("chatgraft", (tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment_id, run_name="cp").info.run_id  # as the flow opens a stage's run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    # a stage's process starts with no tracking URI set in code; a test worker may have one from an earlier test,
    # which would win over the environment (restored afterwards)
    monkeypatch.setattr(mlflow_tracking_utils, "_tracking_uri", None)
    tokenizer = word_tokenizer()
    examples = pack_texts(tokenizer, Dataset.from_dict({"text": ["the city of kato is oslo ."] * 20}), 8)
    params = CPParams(steps=5, batch_size=2, block_size=8, learning_rate=1e-3, eval_every=2)  # 5: no eval step
    result = train_causal_lm(tiny_model(len(tokenizer)), examples, params, default_data_collator,
                             tmp_path / "curve.csv", eval_examples=examples, live_tracking=True)
    mlflow.flush_async_logging()  # the Trainer's callback logs asynchronously
    every_experiment = [experiment.experiment_id for experiment in client.search_experiments()]  # Default too
    assert [run.info.run_id for run in client.search_runs(every_experiment)] == [run_id]
    assert mlflow.active_run() is None  # nothing left open in the stage's process
    assert client.get_run(run_id).data.metrics["train_loss"] > 0
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3, 4, 5]
    evaluations = client.get_metric_history(run_id, "eval_loss")
    assert [m.step for m in evaluations] == [2, 4, 5]  # the last one at the end of training, in this run too
    assert evaluations[-1].value == pytest.approx(result.eval_loss)
