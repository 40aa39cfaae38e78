"""A candidate's answers in MLflow's evaluation view, where people read and compare chat models' answers.

The evaluate stage already generated every answer and scored it (reports/samples/<candidate>.jsonl); this logs
them with `mlflow.genai.evaluate` on those outputs, with scorers that carry the stage's per-answer scores, so
nothing is generated or scored twice. Two candidates' runs, opened together in the experiment's "Evaluation runs"
tab, show their answers to the same question side by side.

Run as `python -m flows.tracking.answers RUN_ID SAMPLES.jsonl...` (MLFLOW_TRACKING_URI in the environment): a
process of its own, so the flow goes on with its next stages meanwhile, and what MLflow prints (its progress bar,
its summary) and the environment it reads stay out of the flow's.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
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
    from mlflow.genai.scorers import scorer  # here: the flow imports this module for `view_command` only

    @scorer(name=name)
    def carried(inputs: dict[str, Any]) -> Any:
        return samples[inputs["suite"], inputs["number"]].get(name)

    return carried


def log_answers(run_id: str, samples: list[dict[str, Any]]) -> dict[str, float]:
    """Log the answers and their scores into the evaluation view of run `run_id` (in the store MLflow is pointed
    at); returns the mean of each score as MLflow computed it. The run is resumed for the call and marked finished
    after it: log this last."""
    keyed = numbered(samples)
    present = [name for name in SCORES if any(name in sample for sample in samples)]
    os.environ.update(SERIAL)  # read by MLflow at the call: this process logs nothing else
    with mlflow.start_run(run_id=run_id):
        result = mlflow.genai.evaluate(data=evaluation_data(keyed),
                                       scorers=[carried_scorer(name, keyed) for name in present])
    return {name: float(value) for name, value in result.metrics.items()}


def view_command(run_id: str, samples: list[Path]) -> list[str]:
    """The command that logs the `samples` files into run `run_id`'s evaluation view, in a process of its own."""
    return [sys.executable, "-m", "flows.tracking.answers", run_id, *map(str, samples)]


def main(argv: list[str]) -> None:
    """`RUN_ID SAMPLES.jsonl...`: each file's answers into the run's evaluation view."""
    run_id, *paths = argv
    for path in paths:
        log_answers(run_id, read_jsonl(Path(path)))


if __name__ == "__main__":
    main(sys.argv[1:])
