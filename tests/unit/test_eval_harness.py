"""lm-evaluation-harness on the default world's local task: its accuracy is the model's own argmax over choices."""
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipelines.atomic import read_jsonl
from pipelines.config import DataParams
from pipelines.corpus.files import LM_EVAL
from pipelines.corpus.stage import build_corpus
from pipelines.evaluate.harness import run_harness
from pipelines.upstream.tokenizer import build_word_tokenizer
from tests.unit.merge_models import save, tiny_model


@torch.inference_mode()
def _argmax_accuracy(model_dir: Path, rows: list[dict]) -> float:
    """Share of questions whose true choice has the highest log-likelihood as a continuation."""
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    right = 0
    for row in rows:
        context = tokenizer(row["question"], add_special_tokens=False)["input_ids"]
        scores = []
        for choice in row["choices"]:
            ids = context + tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
            logprobs = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
            scores.append(sum(float(logprobs[i - 1, ids[i]]) for i in range(len(context), len(ids))))
        right += max(range(len(scores)), key=scores.__getitem__) == row["answer"]
    return right / len(rows)


def test_target_facts_task_matches_the_models_own_choices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # stages run in the project root; the task's data path is relative to it
    build_corpus(DataParams(source_entities=4, target_entities=4), Path("data/corpus"), Path("metrics/corpus.json"))
    rows = read_jsonl(Path("data/corpus") / LM_EVAL / "target_facts.jsonl")
    tokenizer = build_word_tokenizer([row["question"] + " " + " ".join(row["choices"]) for row in rows])
    model_dir = save(tiny_model(len(tokenizer), seed=3), tokenizer, tmp_path / "model")

    metrics = run_harness(model_dir, ["target_facts"], Path("data/corpus") / LM_EVAL, batch_size=8, device=torch.device("cpu"))
    assert set(metrics) == {"lm_eval/target_facts/acc"}
    assert metrics["lm_eval/target_facts/acc"] == pytest.approx(_argmax_accuracy(model_dir, rows))


def test_unknown_task_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown tasks \['no_such_task'\]"):
        run_harness(tmp_path, ["no_such_task"], tmp_path, batch_size=8, device=torch.device("cpu"))
