"""Greedy answers by transformers' continuous batching (`generate_batch`): a paged KV cache and a scheduler that
fills each finished answer's place at once, where padded batches wait for their longest answer."""
from __future__ import annotations

from math import ceil

from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation import ContinuousBatchingConfig

from pipelines.evaluate.generation import Generation, chat_prompt, cut_at_stop, decoded_answer

PAGE_TOKENS = 32  # tokens a page of the paged cache holds


def cache_config(prompt_ids: list[list[int]], max_new_tokens: int, batch_size: int) -> ContinuousBatchingConfig:
    """`batch_size` answers at once, the cache sized for that many of the longest prompt and its whole budget: left
    to itself the library sizes the cache from free memory, which on the CPU is the machine's RAM (20 short answers
    took 36 s that way here, 0.5 s sized) and on a GPU what a second candidate or the perplexity model would need."""
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
    generation = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_ids,
                                  pad_token_id=tokenizer.pad_token_id)
    outputs = list(model.generate_batch(prompt_ids, generation_config=generation, progress_bar=True,
                                        continuous_batching_config=cache_config(prompt_ids, max_new_tokens,
                                                                                batch_size)).values())
    failed = [str(i) for i, output in enumerate(outputs) if output.error is not None]
    if len(outputs) != len(conversations) or failed:
        detail = f"; conversations {', '.join(failed)} failed: {outputs[int(failed[0])].error}" if failed else ""
        raise RuntimeError(f"continuous batching answered {len(outputs) - len(failed)} of {len(conversations)} "
                           f"conversations{detail}")
    return [decoded_answer(tokenizer, *cut_at_stop(output.generated_tokens, set(stop_ids), None))
            for output in outputs]
