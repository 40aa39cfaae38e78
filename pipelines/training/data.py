"""Turn text and conversations into training examples: packed blocks (with `datasets`: memory-mapped Arrow cached
by fingerprint, or streamed), or chats with loss on assistant tokens."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from datasets import Dataset, IterableDataset, load_dataset
from transformers import PreTrainedTokenizerBase

from pipelines.padding import IGNORE_INDEX
from pipelines.training.chat_mask import assistant_token_mask

PACK_GROUP = 10_000  # documents tokenized and packed together; a group's tail shorter than a block is dropped


def text_dataset(path: Path, streaming: bool = False, cache_dir: Path | None = None) -> Dataset | IterableDataset:
    """The rows of a jsonl file with a `text` key: an Arrow dataset (memory-mapped, cached in `cache_dir`), or read
    lazily when `streaming` (corpora larger than memory)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such training text file")
    texts = load_dataset("json", data_files=str(path), split="train", streaming=streaming,
                         cache_dir=str(cache_dir) if cache_dir else None)
    if texts.column_names is not None and "text" not in texts.column_names:
        raise ValueError(f"{path}: rows have no 'text' key (keys: {texts.column_names})")
    return texts


def pack_texts(tokenizer: PreTrainedTokenizerBase, texts: Dataset | IterableDataset,
               block_size: int) -> Dataset | IterableDataset:
    """Join documents (the `text` column) with the EOS token and cut the stream into full blocks of `block_size`
    tokens, `PACK_GROUP` documents at a time; a cached dataset is packed once per tokenizer and block size."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token: documents cannot be separated when packing")

    def blocks(batch: dict[str, list]) -> dict[str, list[list[int]]]:
        encoded = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        stream = list(itertools.chain.from_iterable(ids + [eos] for ids in encoded))
        cut = [stream[i : i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]
        return {"input_ids": cut, "labels": [list(block) for block in cut]}

    packed = texts.select_columns(["text"]).map(blocks, batched=True, batch_size=PACK_GROUP, remove_columns=["text"])
    if isinstance(packed, Dataset) and len(packed) == 0:
        raise ValueError(f"the {len(texts)} documents do not fill one block of {block_size} tokens")
    return packed


def assistant_only_examples(
    tokenizer: PreTrainedTokenizerBase, conversations: list[list[dict[str, str]]],
    template_kwargs: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Tokenize conversations with the chat template (given per-conversation `template_kwargs`, e.g. a condition);
    labels keep only each assistant reply and its end-of-turn token, located by rendering prefixes (any template)."""
    examples = []
    for messages, extra in zip(conversations, template_kwargs or [{}] * len(conversations), strict=True):
        ids, mask = assistant_token_mask(tokenizer, messages, extra)
        if not any(mask):
            raise ValueError(f"no assistant tokens in conversation {messages!r}")
        labels = [token if keep else IGNORE_INDEX for token, keep in zip(ids, mask)]
        examples.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return examples
