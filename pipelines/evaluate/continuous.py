"""Greedy answers by transformers' continuous batching (`generate_batch`): a paged KV cache and a scheduler that
fills each finished answer's place at once, where padded batches wait for their longest answer."""
from __future__ import annotations

import copy
from math import ceil

from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation import ContinuousBatchingConfig

from pipelines.evaluate.generation import Generation, chat_prompt, cut_at_stop, decoded_answer

PAGE_TOKENS = 32  # tokens a page of the paged cache holds


def cache_config(prompt_ids: list[list[int]], max_new_tokens: int, batch_size: int) -> ContinuousBatchingConfig:
    """About `batch_size` answers at once (the scheduler keeps a share of the cache free), the cache sized for that
    many of the longest prompt and its whole budget: left to itself the library sizes the cache from free memory,
    which on the CPU is the machine's RAM (20 short answers took 36 s that way here, 0.5 s sized) and on a GPU what a
    second candidate or the perplexity model would need."""
    pages = ceil((max(map(len, prompt_ids)) + max_new_tokens) / PAGE_TOKENS)
    return ContinuousBatchingConfig(page_size=PAGE_TOKENS, num_blocks=batch_size * pages,
                                    max_requests_per_batch=batch_size)


def continuous_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, str]]],
    stop_ids: list[int],
    max_new_tokens: int,
    batch_size: int,
) -> list[Generation]:
    """Answer each conversation's last user turn greedily, the prompts tokenized as the padded engine does; raise
    RuntimeError naming the conversations the library failed or lost (it logs those and returns the rest). Not under
    inference mode: the library's generation thread updates tensors this thread makes."""
    if not conversations:
        return []
    model.eval()
    prompt_ids = tokenizer([chat_prompt(tokenizer, c) for c in conversations], add_special_tokens=False)["input_ids"]
    generation = greedy_config(model, stop_ids, max_new_tokens, tokenizer.pad_token_id)
    results = model.generate_batch(prompt_ids, generation_config=generation, progress_bar=True,
                                   continuous_batching_config=cache_config(prompt_ids, max_new_tokens, batch_size))
    outputs = [results.get(f"req_{i}") for i in range(len(conversations))]  # a fresh manager's request ids
    lost = [str(i) for i, output in enumerate(outputs) if output is None]
    failed = [str(i) for i, output in enumerate(outputs) if output is not None and output.error is not None]
    if lost or failed:
        reasons = [f"conversations {', '.join(lost)} lost"] if lost else []
        reasons += [f"conversations {', '.join(failed)} failed: {outputs[int(failed[0])].error}"] if failed else []
        raise RuntimeError(f"continuous batching answered {len(outputs) - len(lost) - len(failed)} of "
                           f"{len(conversations)} conversations; {'; '.join(reasons)}")
    return [decoded_answer(tokenizer, *cut_at_stop(output.generated_tokens, set(stop_ids), None))
            for output in outputs]


def greedy_config(model: PreTrainedModel, stop_ids: list[int], max_new_tokens: int,
                  pad_id: int | None) -> GenerationConfig:
    """The model's own generation config with greedy decoding, the budget and the stop ids, as hf's `generate`
    merges them; a ValueError when it asks for a logits processor continuous batching would drop or may misapply
    (a repetition penalty, a minimum length: the answers would differ from hf's), naming it."""
    generation = copy.deepcopy(model.generation_config)
    generation.update(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_ids, pad_token_id=pad_id)
    # the library's own call, as its continuous batching manager builds the processors it then filters
    unsupported = [type(processor).__name__ for processor in model._get_logits_processor(generation)
                   if getattr(processor, "supports_continuous_batching", None) is not True]
    if unsupported:
        raise ValueError(f"{model.name_or_path}: its generation config asks for {', '.join(unsupported)}, which "
                         "transformers' continuous batching drops or may misapply, so its answers would differ from "
                         "hf's: use eval.engine hf (or openai) for this model")
    return generation
