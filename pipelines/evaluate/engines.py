"""What answers a candidate's conversations (`eval.engine`): transformers `generate` in this process (hf) or an
OpenAI-compatible server (openai), asked through one function; the speed report says which ran, since their answers
a second are not comparable."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipelines.config import EvalParams
from pipelines.evaluate.endpoint import answer_through_endpoint
from pipelines.evaluate.generation import Generation, generate_answers
from pipelines.evaluate.server import candidate_endpoint

Conversations = list[list[dict[str, str]]]


@dataclass(frozen=True)
class AnsweringEngine:
    """Answers conversations, in their order; `report` names the engine (and the server) for the speed report."""

    answer: Callable[[Conversations], list[Generation]]
    report: dict[str, str]


@contextmanager
def answering_engine(params: EvalParams, model_dir: Path, tokenizer: PreTrainedTokenizerBase, stop_ids: list[int],
                     model: Callable[[], PreTrainedModel]) -> Iterator[AnsweringEngine]:
    """The engine `params.engine` names, ready until the block ends. hf loads the model with `model()`; openai finds
    or starts the server, and the in-process model is left unloaded meanwhile (a server started on the accelerator
    takes its memory)."""
    if params.engine == "hf":
        loaded = model()
        yield AnsweringEngine(
            lambda conversations: generate_answers(loaded, tokenizer, conversations, stop_ids, params.max_new_tokens,
                                                   params.batch_size),
            {"engine": "hf"})
        return
    with candidate_endpoint(params.server, model_dir) as endpoint:
        yield AnsweringEngine(
            lambda conversations: answer_through_endpoint(endpoint, params.server, tokenizer, conversations, stop_ids,
                                                          params.max_new_tokens),
            {"engine": "openai", "server": endpoint.source})
