"""A candidate's answers in MLflow's evaluation view, where people read and compare chat models' answers.

The evaluate stage already generated every answer and scored it (reports/samples/<candidate>.jsonl); this logs
them with `mlflow.genai.evaluate` on those outputs, with scorers that carry the stage's per-answer scores, so
nothing is generated or scored twice. Two candidates' runs, opened together in the experiment's "Evaluation runs"
tab, show their answers to the same question side by side.

Logged by a `ViewWorker`, a process of the flow's own: the flow goes on with its next stages meanwhile, MLflow's
imports are paid once a run, and what MLflow prints (its progress bar, its summary) and the environment it reads
stay out of the flow's.
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from pipelines.atomic import read_jsonl

# the per-answer scores the evaluate stage writes, in the order the view shows them
SCORES = ("correct", "terminated", "exact_match", "token_f1", "repetition", "language", "refused", "judge")
# one thread: a sqlite store refuses the connections of MLflow's default ten; the answers are already there
SERIAL = {"MLFLOW_GENAI_EVAL_MAX_WORKERS": "1", "MLFLOW_GENAI_EVAL_MAX_SCORER_WORKERS": "1"}

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
    from mlflow.genai.scorers import scorer  # here: the flow imports this module, its worker evaluates

    @scorer(name=name)
    def carried(inputs: dict[str, Any]) -> Any:
        return samples[inputs["suite"], inputs["number"]].get(name)

    return carried


def log_answers(run_id: str, samples: list[dict[str, Any]]) -> None:
    """Log the answers and their scores into the evaluation view of run `run_id` (in the store MLflow is pointed
    at). The run is resumed for the call and marked finished after it: log this last."""
    keyed = numbered(samples)
    present = [name for name in SCORES if any(name in sample for sample in samples)]
    with mlflow.start_run(run_id=run_id):
        mlflow.genai.evaluate(data=evaluation_data(keyed), scorers=[carried_scorer(name, keyed) for name in present])


def _prepare_worker(tracking_uri: str) -> None:
    os.environ.update({**SERIAL, "MLFLOW_TRACKING_URI": tracking_uri})  # read by MLflow at each call
    mlflow.set_tracking_uri(tracking_uri)


def _log_files(run_id: str, samples: list[Path], log: Path | None) -> None:
    with (log or Path(os.devnull)).open("a") as out, redirect_stdout(out), redirect_stderr(out):
        for path in samples:
            log_answers(run_id, read_jsonl(path))


class ViewWorker:
    """One process that logs answers views into the store at `tracking_uri`, one view at a time (sqlite takes one
    writer), started at the first view (spawned: the flow's threads are not forked into it)."""

    def __init__(self, tracking_uri: str) -> None:
        self._pool = ProcessPoolExecutor(1, multiprocessing.get_context("spawn"), initializer=_prepare_worker,
                                         initargs=(tracking_uri,))

    def log(self, run_id: str, samples: list[Path], log: Path | None = None) -> None:
        """Log each `samples` file's answers into run `run_id`'s evaluation view, MLflow's output appended to `log`;
        returns when they are logged, raises what logging them raised."""
        self._pool.submit(_log_files, run_id, samples, log).result()

    def close(self) -> None:
        """Stop the process (once the views given it are logged)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
