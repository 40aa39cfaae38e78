"""The `evaluate` stage: target perplexity, answer accuracy, termination and repetition of one candidate."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from pipelines.atomic import read_jsonl, write_json_atomic, write_jsonl_atomic
from pipelines.config import EvalParams
from pipelines.corpus import EVAL, VALID
from pipelines.evaluate.generation import generate_answers
from pipelines.evaluate.metrics import answer_correct, perplexity, repetition_rate
from pipelines.layout import Layout
from pipelines.upstream import read_upstream

REFERENCE_CANDIDATES = ("base", "chat", "cp")
MERGED_PREFIX = "merged-"


def candidate_dir(layout: Layout, candidate: str) -> Path:
    """The checkpoint of a named candidate: base, chat, cp or merged-<ratio>."""
    if candidate in ("base", "chat"):
        return getattr(read_upstream(layout.upstream), candidate)
    if candidate == "cp":
        return layout.cp_model
    if candidate.startswith(MERGED_PREFIX):
        return layout.merged_model(candidate.removeprefix(MERGED_PREFIX))
    raise ValueError(f"unknown candidate {candidate!r}: expected base, chat, cp or merged-<ratio>")


def end_of_turn_ids(chat_dir: Path, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The chat model's stop tokens (its generation EOS ids), as ids of the evaluated model's vocabulary."""
    eos = GenerationConfig.from_pretrained(chat_dir).eos_token_id
    chat_tokens = AutoTokenizer.from_pretrained(chat_dir).convert_ids_to_tokens(eos if isinstance(eos, list) else [eos])
    return tokenizer.convert_tokens_to_ids(chat_tokens)


@dataclass(frozen=True)
class EvalResult:
    """The candidate's metrics."""

    metrics: dict[str, float]


def evaluate_candidate(model_dir: Path, chat_dir: Path, corpus_dir: Path, params: EvalParams,
                       metrics_path: Path, samples_path: Path) -> EvalResult:
    """Score one checkpoint on the held-out target text and the target chat questions."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not tokenizer.chat_template:  # base and CP models are asked in the chat model's format
        tokenizer.chat_template = AutoTokenizer.from_pretrained(chat_dir).chat_template
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    questions = read_jsonl(corpus_dir / EVAL)[: params.max_questions]
    valid = [row["text"] for row in read_jsonl(corpus_dir / VALID)]

    started = time.perf_counter()
    answers = generate_answers(model, tokenizer, [q["messages"] for q in questions],
                               end_of_turn_ids(chat_dir, tokenizer), params.max_new_tokens, params.batch_size)
    seconds = time.perf_counter() - started
    samples = [
        {
            "prompt": q["messages"][-1]["content"], "answer": a.text, "reference": q["reference"],
            "correct": answer_correct(a.text, q["reference"], a.terminated), "terminated": a.terminated,
            "repetition": repetition_rate(a.token_ids, params.repetition_ngram),
        }
        for q, a in zip(questions, answers)
    ]
    count = len(samples)
    metrics = {
        "target_perplexity": perplexity(model, tokenizer, valid, params.block_size, params.batch_size),
        "answer_accuracy": sum(s["correct"] for s in samples) / count,
        "termination_rate": sum(s["terminated"] for s in samples) / count,
        "repetition_rate": sum(s["repetition"] for s in samples) / count,
        "answers_per_second": count / seconds,
    }
    write_jsonl_atomic(samples_path, samples)
    write_json_atomic(metrics_path, metrics)
    return EvalResult(metrics=metrics)
