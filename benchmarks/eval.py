"""`make bench-eval`: batched greedy generation against one prompt at a time, same model, prompts and run.

Uses the evaluate stage's own generation code on a candidate of the project (default: merged-1.0, built by
`make run` or `dvc repro merge@1.0`) and its eval questions. Prints answers per second of both, the ratio
(goal >= 4x) and whether the greedy answers are identical token for token.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from pipelines.atomic import read_jsonl
from pipelines.config import load_params
from pipelines.corpus.files import EVAL
from pipelines.candidates import candidate_dir
from pipelines.evaluate.stage import end_of_turn_ids
from pipelines.evaluate.generation import Generation, generate_answers
from pipelines.layout import Layout
from pipelines.upstream.manifest import read_upstream


def timed(label: str, run) -> tuple[list[Generation], float]:
    """Run `run()`, print and return its answers and seconds."""
    started = time.perf_counter()
    answers = run()
    seconds = time.perf_counter() - started
    print(f"{label:>20s}: {len(answers)} answers in {seconds:6.2f} s = {len(answers) / seconds:7.1f} answers/s")
    return answers, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path("."), help="project directory with built models")
    parser.add_argument("--candidate", default="merged-1.0", help="base, chat, cp or merged-<ratio>")
    parser.add_argument("--prompts", type=int, default=None, help="questions to ask (default: eval.max_questions)")
    args = parser.parse_args()
    layout, params = Layout(args.project.resolve()), load_params(args.project / "params.yaml").eval
    model_dir = candidate_dir(layout, args.candidate)
    if not model_dir.exists():
        raise SystemExit(f"{model_dir}: not built; run `make run` (or `dvc repro merge@1.0`) first")
    chat_dir = read_upstream(layout.upstream).chat
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = tokenizer.chat_template or AutoTokenizer.from_pretrained(chat_dir).chat_template
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    questions = [q["messages"] for q in read_jsonl(layout.corpus / EVAL)][: args.prompts or params.max_questions]
    stop_ids = end_of_turn_ids(chat_dir, tokenizer)
    print(f"{args.candidate}: {len(questions)} prompts, up to {params.max_new_tokens} new tokens, "
          f"batch size {params.batch_size}")

    def answer(batch_size: int) -> list[Generation]:
        return generate_answers(model, tokenizer, questions, stop_ids, params.max_new_tokens, batch_size)

    answer(params.batch_size)  # warm-up: first calls pay for lazy initialisation
    single, single_s = timed("one at a time", lambda: answer(1))
    batched, batched_s = timed(f"batches of {params.batch_size}", lambda: answer(params.batch_size))
    same = sum(a.token_ids == b.token_ids and a.terminated == b.terminated for a, b in zip(single, batched))
    print(f"throughput ratio batched / one at a time: {single_s / batched_s:.1f}x [goal >= 4x]")
    print(f"identical greedy answers: {same}/{len(questions)}")


if __name__ == "__main__":
    main()
