"""A candidate's answers in MLflow's evaluation view, where people read and compare chat models' answers.

The evaluate stage already generated every answer and scored it (reports/samples/<candidate>.jsonl); this logs
them with `mlflow.genai.evaluate` on those outputs, with scorers that carry the stage's per-answer scores, so
nothing is generated or scored twice. Two candidates' runs, opened together in the experiment's "Evaluation runs"
tab, show their answers to the same question side by side.
"""
from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from typing import Any
from unittest import mock

import mlflow
import pandas as pd
from mlflow.genai.scorers import scorer

from flows.tracking.store import Store

# the per-answer scores the evaluate stage writes, in the order the view shows them
SCORES = ("correct", "terminated", "exact_match", "token_f1", "repetition", "language", "refused", "judge")
# one thread: a sqlite store refuses the connections of MLflow's default ten; the answers are already there
SERIAL = {"MLFLOW_GENAI_EVAL_MAX_WORKERS": "1", "MLFLOW_GENAI_EVAL_MAX_SCORER_WORKERS": "1"}
_ONE_AT_A_TIME = threading.Lock()

Key = tuple[str, int]


def numbered(samples: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """Each sample under (suite, its number in the suite from 1): the same key for the same question of every
    candidate (two conversations can end with the same question, so the question alone is not a key)."""
    counts: dict[str, int] = {}
    keyed = {}
    for sample in samples:
        counts[sample["suite"]] = counts.get(sample["suite"], 0) + 1
        keyed[sample["suite"], counts[sample["suite"]]] = sample
    return keyed


def evaluation_data(samples: dict[Key, dict[str, Any]]) -> pd.DataFrame:
    """Numbered samples as `mlflow.genai.evaluate` data: suite, number and question as inputs (the view pairs two
    candidates' answers by them), the answer as outputs, the reference (or whether the request is harmful) as
    expectations."""
    rows = []
    for (suite, number), sample in samples.items():
        expectations = {"expected_response": sample["reference"]} if "reference" in sample else {}
        if "harmful" in sample:
            expectations["harmful"] = sample["harmful"]
        rows.append({"inputs": {"suite": suite, "number": number, "question": sample["prompt"]},
                     "outputs": sample["answer"], "expectations": expectations})
    return pd.DataFrame(rows)


def carried_scorer(name: str, samples: dict[Key, dict[str, Any]]) -> Callable:
    """A scorer returning the stage's score `name` for the answer (None where the suite has no such score)."""

    @scorer(name=name)
    def carried(inputs: dict[str, Any]) -> Any:
        return samples[inputs["suite"], inputs["number"]].get(name)

    return carried


def log_answers(store: Store, run_id: str, samples: list[dict[str, Any]]) -> dict[str, float]:
    """Log the answers and their scores into the evaluation view of run `run_id`; returns the mean of each score
    as MLflow computed it. The run is resumed for the call and marked finished after it: log this last."""
    keyed = numbered(samples)
    present = [name for name in SCORES if any(name in sample for sample in samples)]
    mlflow.set_tracking_uri(store.uri)
    # the environment and sys.stdout/stderr are the process's: stages side by side log one after the other, or a
    # thread's redirection ends inside another's and leaves the terminal pointing at a buffer
    with (_ONE_AT_A_TIME, mock.patch.dict(os.environ, SERIAL), redirect_stdout(io.StringIO()),
          redirect_stderr(io.StringIO()), mlflow.start_run(run_id=run_id)):
        result = mlflow.genai.evaluate(data=evaluation_data(keyed),
                                       scorers=[carried_scorer(name, keyed) for name in present])
    return {name: float(value) for name, value in result.metrics.items()}
