"""`make bench-eval`: the evaluation's in-process engines on one candidate, same prompts, same run.

Padded batches (`eval.engine: hf`, the baseline), transformers' continuous batching (`continuous`) and padded
batches of one prompt (what batching buys), through the evaluate stage's own code: answers a second, generated
tokens a second, the ratio to the baseline and how many greedy answers are identical to the baseline's, token for
token. The candidate is a project's (default merged-1.0 of `make run`, on its eval questions) or, with
`--synthetic`, a Llama of that size with random weights (bf16 checkpoint) asked random-word questions, its
end-of-turn rows of the output layer scaled by `--end-scale` so that answers end at varied lengths as a chat model's
do (2: most end within a few tokens, some run to the budget; 1: every answer runs to the budget). On a CUDA GPU
each engine's tokens a second is set against the memory-bandwidth bound: every decode step reads the weights once,
so `answers at once x bandwidth / weight bytes` tokens a second at most (KV-cache reads and compute ignored; the
continuous engine may decode fewer than `eval.batch_size` at once, which lowers its share).
"""
from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from benchmarks.synthetic_llama import llama_config, write_trio
from pipelines.atomic import read_jsonl
from pipelines.candidates import candidate_dir
from pipelines.config import load_params
from pipelines.corpus.files import EVAL
from pipelines.devices import load_for_inference, resolve_device
from pipelines.evaluate.engines import IN_PROCESS
from pipelines.evaluate.generation import Generation
from pipelines.evaluate.stage import end_of_turn_ids
from pipelines.layout import Layout
from pipelines.padding import with_pad_token
from pipelines.upstream.manifest import read_upstream

SYNTHETIC = {  # name: llama_config's arguments
    "100m": {"layers": 8, "hidden": 768, "intermediate": 2048, "heads": 12, "vocab": 32000},
    "1b": {"layers": 22, "hidden": 2048, "intermediate": 5632, "heads": 32, "kv_heads": 4, "vocab": 32000},
}
Conversations = list[list[dict[str, str]]]


def project_candidate(project: Path, name: str, prompts: int | None) -> tuple[Path, Path, Conversations]:
    """A project's candidate folder, its chat model's folder and the eval questions."""
    layout = Layout(project.resolve())
    model_dir = candidate_dir(layout, name)
    if not model_dir.exists():
        raise SystemExit(f"{model_dir}: not built; run `make run` (or `dvc repro merge@1.0`) first")
    questions = [q["messages"] for q in read_jsonl(layout.corpus / EVAL)]
    return model_dir, read_upstream(layout.upstream).chat, questions[: prompts or len(questions)]


def synthetic_candidate(size: str, work: Path, prompts: int) -> tuple[Path, Path, Conversations]:
    """A synthetic Llama's chat model (its own candidate; written in `work` unless there already) and random-word
    questions of 10 to 40 words."""
    chat = work / "chat" if (work / "chat").exists() else write_trio(work, llama_config(**SYNTHETIC[size]))["chat"]
    rng = random.Random(0)
    words = SYNTHETIC[size]["vocab"] - 100
    questions = [[{"role": "user", "content": " ".join(f"w{rng.randrange(words)}" for _ in range(rng.randint(10, 40)))}]
                 for _ in range(prompts)]
    return chat, chat, questions


def bandwidth_bound(model: PreTrainedModel) -> float | None:
    """Decode steps a second the GPU's memory bandwidth allows for these weights (an untied input embedding left
    out: a step reads a few of its rows); None on a CPU."""
    if model.device.type != "cuda":
        return None
    from torch.cuda._device_limits import GPULimits  # torch's own figures of the card (bus width x memory clock)

    embedding = [] if model.config.tie_word_embeddings else model.get_input_embeddings().parameters()
    looked_up = {id(p) for p in embedding}
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in looked_up)
    return GPULimits(model.device).get_memory_bandwidth_Bps() / weight_bytes


def timed(answer: Callable[[], list[Generation]]) -> tuple[list[Generation], float]:
    """The answers and the seconds they took (the GPU's queue drained)."""
    started = time.perf_counter()
    answers = answer()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return answers, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path("."), help="project whose params and candidate are used")
    parser.add_argument("--candidate", default="merged-1.0", help="base, chat, cp, merged-<ratio>, ...")
    parser.add_argument("--synthetic", choices=sorted(SYNTHETIC), help="a random-weight Llama of this size instead")
    parser.add_argument("--synthetic-dir", type=Path, default=None,
                        help="where the synthetic models are written, or read when there (default: a temporary folder)")
    parser.add_argument("--prompts", type=int, default=None, help="questions (default: eval.max_questions)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: eval.max_new_tokens")
    parser.add_argument("--batch-size", type=int, default=None, help="default: eval.batch_size")
    parser.add_argument("--one-at-a-time", type=int, default=32, help="prompts for batches of one (0: skip)")
    parser.add_argument("--end-scale", type=float, default=2.0, help="synthetic: scale of the end-of-turn rows")
    args = parser.parse_args(argv)
    params = load_params(args.project / "params.yaml").eval
    prompts, budget = args.prompts or params.max_questions, args.max_new_tokens or params.max_new_tokens
    batch_size = args.batch_size or params.batch_size
    with tempfile.TemporaryDirectory(prefix="chatgraft-bench-eval-") as work:
        synthetic_dir = args.synthetic_dir or Path(work)
        model_dir, chat_dir, questions = (synthetic_candidate(args.synthetic, synthetic_dir, prompts) if args.synthetic
                                          else project_candidate(args.project, args.candidate, prompts))
        tokenizer = with_pad_token(AutoTokenizer.from_pretrained(model_dir), model_dir)
        tokenizer.chat_template = tokenizer.chat_template or AutoTokenizer.from_pretrained(chat_dir).chat_template
        stop_ids = end_of_turn_ids(chat_dir, tokenizer)
        model = load_for_inference(model_dir, resolve_device(params.device))
        if args.synthetic:
            with torch.no_grad():
                model.get_output_embeddings().weight[stop_ids] *= args.end_scale
        report(model, tokenizer, questions, stop_ids, budget, batch_size, args.one_at_a_time,
               args.synthetic or args.candidate)


def report(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, questions: Conversations,
           stop_ids: list[int], budget: int, batch_size: int, one_at_a_time: int, name: str) -> None:
    """Time each engine on the questions (after a warm-up) and print the table."""
    billions = sum(p.numel() for p in model.parameters()) / 1e9
    print(f"{name}: {billions:.3f} B parameters, {model.dtype}, {model.device}; {len(questions)} prompts, up to "
          f"{budget} new tokens, batch size {batch_size}")
    runs = {"hf": (questions, batch_size), "continuous": (questions, batch_size)}
    if one_at_a_time:
        runs["hf, batches of 1"] = (questions[:one_at_a_time], 1)
    steps = bandwidth_bound(model)
    baseline: tuple[list[Generation], float] | None = None
    print("| engine | answers | ended | median length | answers/s | new tokens/s | vs hf | identical to hf |"
          + (" share of the bandwidth bound |" if steps else ""))
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if steps else ""))
    for label, (asked, size) in runs.items():
        answer = IN_PROCESS[label.split(",")[0]]
        answer(model, tokenizer, asked[:size], stop_ids, budget, size)  # warm-up: lazy initialisation, kernels
        answers, seconds = timed(lambda: answer(model, tokenizer, asked, stop_ids, budget, size))
        baseline = baseline or (answers, seconds)
        tokens = sum(len(a.token_ids) + a.terminated for a in answers)
        same = sum(a == b for a, b in zip(answers, baseline[0]))
        per_answer = (seconds / len(answers)) / (baseline[1] / len(baseline[0]))
        lengths = sorted(len(a.token_ids) for a in answers)
        row = (f"| {label} | {len(answers)} | {sum(a.terminated for a in answers)} | {lengths[len(lengths) // 2]} | "
               f"{len(answers) / seconds:.1f} | {tokens / seconds:.0f} | "
               f"{1 / per_answer:.2f}x | {same}/{len(answers)} |")
        print(row + (f" {tokens / seconds / (steps * size):.0%} |" if steps else ""), flush=True)
    if steps:
        print(f"bandwidth bound: {steps:.0f} decode steps/s (weights read once a step), x the answers decoded at once")


if __name__ == "__main__":
    main()
