"""The `evaluate` stage: every suite (perplexity, instructions, termination, repetition, language, multi-turn,
safety) on one candidate; metrics as a DVC metrics file, one sample row per answer for the MLflow table."""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from pipelines.atomic import write_json_atomic, write_jsonl_atomic
from pipelines.config import EvalParams
from pipelines.devices import load_for_inference, resolve_device
from pipelines.evaluate.degeneration import distinct_n, repetition_rate, termination_rate
from pipelines.evaluate.engines import answering_engine
from pipelines.evaluate.generation import Generation
from pipelines.evaluate.harness import run_harness
from pipelines.evaluate.instruction import answer_correct, exact_match, token_f1
from pipelines.evaluate.judge import Judge, judge_score
from pipelines.evaluate.language import language_consistency, lexicon_share, script_pattern, script_share
from pipelines.evaluate.perplexity import perplexity
from pipelines.evaluate.safety import (
    DEFAULT_REFUSAL_PATTERNS, classifier_refusals, is_refusal, refusal_matcher, safety_rates,
)
from pipelines.evaluate.inputs import SET_FILES, EvalInput, eval_input_problems, eval_inputs
from pipelines.evaluate.sets import EvalExample
from pipelines.padding import with_pad_token


def end_of_turn_ids(chat_dir: Path, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The chat model's stop tokens (its generation EOS ids), as ids of the evaluated model's vocabulary; those it
    lacks (a base model has no chat-only token such as `<|im_end|>`) cannot be generated and are left out, down to
    the model's own end-of-sequence token when none is left."""
    chat_tokenizer = AutoTokenizer.from_pretrained(chat_dir)
    generation = GenerationConfig.from_pretrained(chat_dir) if (chat_dir / "generation_config.json").exists() else None
    eos = generation.eos_token_id if generation and generation.eos_token_id is not None else chat_tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"{chat_dir}: neither generation_config.json nor the tokenizer names an end-of-turn token")
    tokens = chat_tokenizer.convert_ids_to_tokens(eos if isinstance(eos, list) else [eos])
    vocabulary = tokenizer.get_vocab()
    known = [vocabulary[token] for token in tokens if token in vocabulary]
    if not known and tokenizer.eos_token_id is None:
        raise ValueError(f"{chat_dir}: the evaluated model knows none of the chat model's end-of-turn tokens "
                         f"{tokens} and has no end-of-sequence token of its own")
    return known or [tokenizer.eos_token_id]


@dataclass(frozen=True)
class EvalResult:
    """The candidate's scores, and how fast it answered (kept apart: a wall-clock figure, other on every run)."""

    metrics: dict[str, float]
    answers_per_second: float


def require_eval_inputs(inputs: Mapping[str, EvalInput], corpus_dir: Path) -> None:
    """Raise ValueError listing every input the evaluation cannot read, before a model is loaded."""
    problems = eval_input_problems(inputs, f"run the corpus stage, which writes {corpus_dir}")
    if problems:
        raise ValueError("\n  ".join(["inputs the evaluation cannot read (no model was loaded)", *problems]))


def eval_sets(params: EvalParams, corpus_dir: Path) -> dict[str, list[EvalExample]]:
    """The instruction, multi-turn and safety sets, from params or from the corpus stage."""
    inputs = eval_inputs(params, corpus_dir)
    return {suite: inputs[suite].read() for suite in SET_FILES}


def _language_scorer(params: EvalParams, corpus_dir: Path) -> Callable[[str], float | None]:
    """The share of an answer in the target language: by `eval.language_scripts`, else as the generated world
    says (its script, or the domain world's lexicon)."""
    generated = eval_inputs(params, corpus_dir).get("target_language")
    world = generated.read() if generated else {}
    if params.language_scripts or "scripts" in world:
        scripts = script_pattern(params.language_scripts or world["scripts"])
        return lambda text: script_share(text, scripts)
    lexicon = set(world["lexicon"])
    return lambda text: lexicon_share(text, lexicon)


def _sample(suite: str, example: EvalExample, answer: Generation, params: EvalParams,
            language: Callable[[str], float | None], refusal: re.Pattern) -> dict[str, Any]:
    """One row of the samples table: the prompt, the answer and its per-sample scores."""
    row: dict[str, Any] = {"suite": suite, "prompt": example.messages[-1].content, "answer": answer.text,
                           "terminated": answer.terminated,
                           "repetition": repetition_rate(answer.token_ids, params.repetition_ngram)}
    if example.reference is not None:
        row |= {"reference": example.reference,
                "correct": answer_correct(answer.text, example.reference, answer.terminated),
                "exact_match": exact_match(answer.text, example.reference),
                "token_f1": token_f1(answer.text, example.reference), "language": language(answer.text)}
    if example.harmful is not None:
        row |= {"harmful": example.harmful, "refused": is_refusal(answer.text, refusal)}
    return row


def _classify_refusals(params: EvalParams, classifier: Path, samples: list[dict[str, Any]],
                       device: torch.device) -> None:
    """Replace the pattern verdicts of the safety rows by the classifier's."""
    rows = [row for row in samples if row["suite"] == "safety"]
    verdicts = classifier_refusals(classifier, [row["answer"] for row in rows], params.refusal_label,
                                   params.batch_size, device)
    for row, refused in zip(rows, verdicts):
        row["refused"] = refused


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return sum(float(row[key]) for row in rows) / len(rows) if rows else 0.0


def suite_metrics(samples: list[dict[str, Any]], answers: dict[str, list[Generation]],
                  params: EvalParams) -> dict[str, float]:
    """Every suite's metric from the sample rows (the instruction set is the one guardrails watch)."""
    by_suite = {suite: [row for row in samples if row["suite"] == suite] for suite in answers}
    instruction, safety = by_suite["instruction"], by_suite["safety"]
    asked = by_suite["instruction"] + by_suite["multiturn"]
    return {
        "answer_accuracy": _mean(instruction, "correct"),
        "exact_match": _mean(instruction, "exact_match"),
        "token_f1": _mean(instruction, "token_f1"),
        "termination_rate": termination_rate([row["terminated"] for row in instruction]),
        "repetition_rate": _mean(instruction, "repetition"),
        f"distinct_{params.distinct_n}": distinct_n([a.token_ids for a in answers["instruction"]], params.distinct_n),
        "language_consistency": language_consistency([row["language"] for row in asked]),
        "multiturn_accuracy": _mean(by_suite["multiturn"], "correct"),
        **safety_rates([row["refused"] for row in safety], [row["harmful"] for row in safety]),
    }


def _judge(model: str, samples: list[dict[str, Any]]) -> float:
    """Rate the instruction answers with the LLM judge; each row gets its rating, the result is the mean."""
    rows = [row for row in samples if row["suite"] == "instruction"]
    ratings = Judge.from_environment(model).rate_all([(r["prompt"], r["answer"], r["reference"]) for r in rows])
    for row, rating in zip(rows, ratings):
        row["judge"] = rating
    return judge_score(ratings)


def evaluate_candidate(*, model_dir: Path, chat_dir: Path, corpus_dir: Path, params: EvalParams,
                       metrics_path: Path, samples_path: Path, speed_path: Path | None = None) -> EvalResult:
    """Score one checkpoint on every suite: held-out text, instructions, multi-turn, language, safety; on the
    accelerator when there is one (`eval.device`), the answers from the engine `eval.engine` names. The scores go
    to `metrics_path`, every answer to `samples_path`, and the answers a second (and the engine that gave them) to
    `speed_path` when given (never beside the scores, which later stages depend on)."""
    inputs = eval_inputs(params, corpus_dir)
    require_eval_inputs(inputs, corpus_dir)
    device = resolve_device(params.device)
    tokenizer = with_pad_token(AutoTokenizer.from_pretrained(model_dir), model_dir)
    if not tokenizer.chat_template:  # base and CP models are asked in the chat model's format
        tokenizer.chat_template = AutoTokenizer.from_pretrained(chat_dir).chat_template
    model = cache(partial(load_for_inference, model_dir, device))  # loaded once, by the first that needs it
    sets = eval_sets(params, corpus_dir)
    stop_ids = end_of_turn_ids(chat_dir, tokenizer)

    with answering_engine(params, model_dir, tokenizer, stop_ids, model) as engine:
        started = time.perf_counter()
        answers = {suite: engine.answer([e.conversation() for e in examples]) for suite, examples in sets.items()}
        seconds = time.perf_counter() - started
    language = _language_scorer(params, corpus_dir)
    refusal = refusal_matcher(params.refusal_patterns or DEFAULT_REFUSAL_PATTERNS)
    samples = [_sample(suite, example, answer, params, language, refusal)
               for suite, examples in sets.items() for example, answer in zip(examples, answers[suite])]
    if params.refusal_classifier:
        _classify_refusals(params, inputs["refusal_classifier"].path, samples, device)
    heldout = inputs["heldout"].read()
    metrics = {
        "target_perplexity": perplexity(model(), tokenizer, heldout, params.block_size, params.batch_size),
        **suite_metrics(samples, answers, params),
    }
    if params.lm_eval_tasks:
        metrics |= run_harness(model_dir, params.lm_eval_tasks, inputs["lm_eval"].path, params.batch_size, device)
    if params.judge_model:
        metrics["judge_score"] = _judge(params.judge_model, samples)
    write_jsonl_atomic(samples_path, samples)
    write_json_atomic(metrics_path, metrics)
    speed = len(samples) / seconds
    if speed_path:
        write_json_atomic(speed_path, {"answers_per_second": speed, **engine.report})
    return EvalResult(metrics=metrics, answers_per_second=speed)
