"""Turn text and conversations into training examples: packed blocks, or chats with loss on assistant tokens."""
from __future__ import annotations

import itertools
from typing import Any

from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


def pack_texts(tokenizer: PreTrainedTokenizerBase, texts: list[str], block_size: int) -> list[dict[str, list[int]]]:
    """Join documents with the EOS token and cut the stream into full blocks of `block_size` tokens."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token: documents cannot be separated when packing")
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    stream = list(itertools.chain.from_iterable(ids + [tokenizer.eos_token_id] for ids in encoded))
    blocks = [stream[i : i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]
    if not blocks:
        raise ValueError(f"{len(stream)} tokens do not fill one block of {block_size}")
    return [{"input_ids": block, "labels": list(block)} for block in blocks]


def assistant_only_examples(
    tokenizer: PreTrainedTokenizerBase, conversations: list[list[dict[str, str]]],
    template_kwargs: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Tokenize conversations with the chat template (given per-conversation `template_kwargs`, e.g. a condition);
    labels keep only assistant tokens (template generation tags)."""
    examples = []
    for messages, extra in zip(conversations, template_kwargs or [{}] * len(conversations), strict=True):
        rendered = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, **extra
        )
        ids, mask = list(rendered["input_ids"]), list(rendered["assistant_masks"])
        if not any(mask):
            raise ValueError(f"no assistant tokens in conversation {messages!r}: does the chat template mark them?")
        labels = [token if keep else IGNORE_INDEX for token, keep in zip(ids, mask)]
        examples.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return examples
