"""What answers a candidate's conversations (`eval.engine`): transformers in this process, by padded batches (hf)
or continuous batching (continuous), or an OpenAI-compatible server (openai), asked through one function; the speed
report says which ran (and the server, and the name asked of a running one), since their answers a second are not comparable."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipelines.config import EvalParams
from pipelines.evaluate.continuous import continuous_answers
from pipelines.evaluate.endpoint import answer_through_endpoint
from pipelines.evaluate.generation import Generation, generate_answers
from pipelines.evaluate.server import candidate_endpoint

Conversations = list[list[dict[str, str]]]
IN_PROCESS = {"hf": generate_answers, "continuous": continuous_answers}  # the engines answering in this process


@dataclass(frozen=True)
class AnsweringEngine:
    """Answers conversations, in their order; `report` names the engine (and the server) for the speed report."""

    answer: Callable[[Conversations], list[Generation]]
    report: dict[str, str]


@contextmanager
def answering_engine(params: EvalParams, model_dir: Path, tokenizer: PreTrainedTokenizerBase, stop_ids: list[int],
                     model: Callable[[], PreTrainedModel]) -> Iterator[AnsweringEngine]:
    """The engine `params.engine` names, ready until the block ends. hf and continuous load the model with `model()`;
    openai finds or starts the server, and the in-process model is left unloaded meanwhile (a server started on the
    accelerator takes its memory)."""
    if params.engine in IN_PROCESS:
        loaded, answer = model(), IN_PROCESS[params.engine]
        yield AnsweringEngine(
            lambda conversations: answer(loaded, tokenizer, conversations, stop_ids, params.max_new_tokens,
                                         params.batch_size),
            {"engine": params.engine})
        return
    with candidate_endpoint(params.server, model_dir) as endpoint:
        yield AnsweringEngine(
            lambda conversations: answer_through_endpoint(endpoint, params.server, tokenizer, conversations, stop_ids,
                                                          params.max_new_tokens),
            {"engine": "openai", "server": endpoint.source})
