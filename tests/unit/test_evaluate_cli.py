"""`chatgraft evaluate`: the flow's suites on any model folder, scores printed and written; bad folders named
before any model is loaded."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from typer.testing import CliRunner

from flows.cli import app
from pipelines.config import DataParams, load_params
from pipelines.corpus.stage import build_corpus
from pipelines.evaluate.inputs import eval_inputs
from pipelines.upstream.tokenizer import as_chat_tokenizer, build_word_tokenizer
from tests.unit.merge_models import save, tiny_model


def project(tmp_path: Path) -> Path:
    """A project folder with params.yaml (eval kept small) and, of the default world's corpus, only the files
    `eval_inputs` names: an evaluation that read any other would fail, so the list the checks use is whole."""
    root = tmp_path / "project"
    corpus = root / "data" / "corpus"
    corpus.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump({"eval": {"max_new_tokens": 4, "max_questions": 6}}))
    build_corpus(DataParams(source_entities=4, target_entities=4), tmp_path / "corpus", tmp_path / "stats.json")
    for item in eval_inputs(load_params(root / "params.yaml").eval, corpus).values():
        shutil.copy(tmp_path / "corpus" / item.path.relative_to(corpus), item.path)
    return root


def test_a_model_folder_is_scored_on_every_suite(tmp_path: Path) -> None:
    root = project(tmp_path)
    words = [(root / "data" / "corpus" / name).read_text() for name in ("eval.jsonl", "valid.jsonl")]
    tokenizer = as_chat_tokenizer(build_word_tokenizer(words))
    model = save(tiny_model(len(tokenizer)), tokenizer, tmp_path / "some-model")
    done = CliRunner().invoke(app, ["evaluate", "--model", str(model), "--project-dir", str(root),
                                    "--out", str(tmp_path / "scores")])
    assert done.exit_code == 0, done.output
    metrics = json.loads((tmp_path / "scores" / "some-model.json").read_text())
    assert {"answer_accuracy", "target_perplexity", "multiturn_accuracy", "refusal_rate"} <= set(metrics)
    assert f"target_perplexity  {metrics['target_perplexity']:.4f}".split() == next(
        line.split() for line in done.output.splitlines() if line.startswith("target_perplexity"))
    rows = [json.loads(line) for line in (tmp_path / "scores" / "some-model.samples.jsonl").open()]
    suites = [row["suite"] for row in rows]
    assert set(suites) == {"instruction", "multiturn", "safety"} and suites.count("instruction") == 6  # max_questions


def test_a_folder_that_is_not_a_model_is_named(tmp_path: Path) -> None:
    root = project(tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hi")
    done = CliRunner().invoke(app, ["evaluate", "--model", str(tmp_path / "notes"), "--project-dir", str(root)])
    assert done.exit_code == 2 and "--model: " in done.output and "notes" in done.output, done.output
    assert "config.json" in done.output
