"""Answers from an OpenAI-compatible server's /v1/completions (`eval.engine: openai`): the prompt the hf engine builds,
greedy, ended by the same end-of-turn ids, several requests in flight; the same Generation objects, so that every
suite scores them as it scores the hf engine's."""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm
from transformers import GenerationConfig, PreTrainedTokenizerBase

from pipelines.config import EvalServerParams
from pipelines.evaluate.generation import Generation, chat_prompt, cut_at_stop, decoded_answer
from pipelines.evaluate.server import Endpoint, EndpointError

ERROR_BODY_CHARS = 500  # of a failed request's answer, quoted in the error


def answer_through_endpoint(endpoint: Endpoint, params: EvalServerParams, tokenizer: PreTrainedTokenizerBase,
                            conversations: list[list[dict[str, str]]], stop_ids: list[int],
                            max_new_tokens: int) -> list[Generation]:
    """Answer each conversation's last user turn greedily through `endpoint`, `params.concurrency` requests at once;
    the answers in the conversations' order."""
    fields = request_fields(params.dialect, endpoint.model, stop_ids, max_new_tokens)
    requests = [fields | {"prompt": prompt_field(params.dialect, tokenizer, chat_prompt(tokenizer, conversation),
                                                 endpoint.model)} for conversation in conversations]
    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    limits = httpx.Limits(max_connections=params.concurrency, max_keepalive_connections=params.concurrency)
    with httpx.Client(headers=headers, timeout=params.request_timeout_s, limits=limits) as client:
        pool = ThreadPoolExecutor(params.concurrency, thread_name_prefix="answer")
        complete_one = partial(complete, client, endpoint, params.dialect)
        try:
            choices = list(tqdm(pool.map(complete_one, requests), total=len(requests), desc="answer", unit="answer"))
            choices = with_stops_on_the_last_token(choices, requests, lambda again: list(pool.map(complete_one, again)))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # after a failed request, the queued ones are not sent
    return [answer_from_choice(choice, tokenizer, stop_ids, max_new_tokens) for choice in choices]


def with_stops_on_the_last_token(choices: list[dict[str, Any]], requests: list[dict[str, Any]],
                                 ask: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """`choices`, those that a stop id ended on the budget's last token saying `stop`. vLLM and transformers serve
    say `length` then; an answer's ids show the stop, its text does not (a stop id is a special token): the answers
    without ids that the budget capped are asked again with one token more, which says `stop` exactly then."""
    capped = [i for i, choice in enumerate(choices) if choice["finish_reason"] == "length" and
              choice.get("token_ids") is None]
    longer = ask([requests[i] | {"max_tokens": requests[i]["max_tokens"] + 1} for i in capped])
    stopped = {i for i, choice in zip(capped, longer) if choice["finish_reason"] == "stop"}
    return [choice | {"finish_reason": "stop"} if i in stopped else choice for i, choice in enumerate(choices)]


def request_fields(dialect: str, model: str, stop_ids: list[int], max_new_tokens: int) -> dict[str, Any]:
    """Every request's fields but its prompt: greedy, the budget, and the end-of-turn ids in the server's dialect."""
    fields = {"model": model, "max_tokens": max_new_tokens, "temperature": 0}
    if dialect == "vllm":
        # only the end-of-turn ids end an answer, as with hf (ignore_eos: not the candidate's own EOS); the answer's
        # ids come back, read as hf reads its own
        return fields | {"stop_token_ids": stop_ids, "ignore_eos": True, "return_token_ids": True}
    # transformers serve refuses fields OpenAI's API lacks: the stop ids go in a generation config, which replaces
    # the candidate's own whole, so it starts from that one
    generation = generation_defaults(Path(model))
    generation.eos_token_id, generation.do_sample = stop_ids, False
    return fields | {"generation_config": generation.to_json_string(use_diff=True)}


def prompt_field(dialect: str, tokenizer: PreTrainedTokenizerBase, prompt: str, model: str) -> list[int] | str:
    """The request's prompt: for vllm the ids hf feeds (a server that tokenizes the text adds a BOS again), for
    transformers serve (text only) the text it turns into those ids."""
    if dialect == "vllm":
        return tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return text_prompt(tokenizer, prompt, model)


def generation_defaults(model_dir: Path) -> GenerationConfig:
    """The candidate's own generation config (what hf's `generate` starts from: a repetition penalty counts in greedy
    answers too), or the library's defaults when it has none."""
    if (model_dir / "generation_config.json").is_file():
        return GenerationConfig.from_pretrained(model_dir)
    return GenerationConfig()


def text_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, model: str) -> str:
    """`prompt` for a server that tokenizes text with the special tokens the tokenizer adds (transformers serve
    does): without the BOS the chat template wrote when the tokenizer adds it again, so the server reads the ids hf
    feeds; an error when no text gives them."""
    wanted = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if tokenizer(prompt)["input_ids"] == wanted:
        return prompt
    bos = tokenizer.bos_token
    if bos and prompt.startswith(bos) and tokenizer(prompt[len(bos):])["input_ids"] == wanted:
        return prompt[len(bos):]
    raise EndpointError(f"{model}: its tokenizer adds special tokens to a prompt (ids {tokenizer('')['input_ids']} "
                        "for an empty one) that a server taking text cannot be told to leave out: use "
                        "eval.server.dialect: vllm (the prompt as ids) or eval.engine: hf")


def complete(client: httpx.Client, endpoint: Endpoint, dialect: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST one request; its one choice, or an error naming the server, the candidate and what went wrong."""
    url = f"{endpoint.base_url}/completions"
    asked = f"{endpoint.named}: POST {url} for {endpoint.model}"
    try:
        response = client.post(url, json=body)
    except httpx.TimeoutException:
        raise EndpointError(f"{asked}: no answer within eval.server.request_timeout_s") from None
    except httpx.HTTPError as error:
        raise EndpointError(f"{asked}: {type(error).__name__}: {error}") from None
    if response.is_error:
        raise EndpointError(f"{asked} (eval.server.dialect: {dialect}): {response.status_code} "
                            f"{response.text[:ERROR_BODY_CHARS]}")
    try:
        (choice,) = response.json()["choices"]
        if isinstance(choice["text"], str) and choice["finish_reason"] in ("stop", "length"):
            return choice
    except (ValueError, KeyError, TypeError):
        pass
    raise EndpointError(f"{asked}: expected one choice with text and finish_reason stop or length, got "
                        f"{response.text[:ERROR_BODY_CHARS]}")


def answer_from_choice(choice: dict[str, Any], tokenizer: PreTrainedTokenizerBase, stop_ids: list[int],
                       max_new_tokens: int) -> Generation:
    """The answer as the hf engine gives it. With the answer's ids (vLLM's return_token_ids), cut at the first stop
    id and decoded as hf decodes, terminated when a stop id ended it (it is then shorter than the budget); with only
    its text (transformers serve), the ids the evaluated tokenizer reads in it, terminated when the server says a
    stop ended it."""
    returned = choice.get("token_ids")
    if returned is None:
        ids = tokenizer(choice["text"], add_special_tokens=False)["input_ids"]
        return Generation(choice["text"].strip(), ids, choice["finish_reason"] == "stop")
    ids, _ = cut_at_stop(list(returned), set(stop_ids), None)
    return decoded_answer(tokenizer, ids, choice["finish_reason"] == "stop" or len(ids) < max_new_tokens)
