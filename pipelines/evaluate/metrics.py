"""Scores of answers and of held-out text; pure functions of their inputs."""
from __future__ import annotations

import math
import re
import string

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, default_data_collator

from pipelines.training import pack_texts

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize(text: str) -> list[str]:
    """Lower-case words with punctuation removed."""
    return _PUNCTUATION.sub(" ", text.lower()).split()


def answer_correct(answer: str, reference: str, terminated: bool) -> bool:
    """The answer ended with an end-of-turn token and contains the reference's words in order."""
    expected, words = normalize(reference), normalize(answer)
    return terminated and bool(expected) and any(
        words[i : i + len(expected)] == expected for i in range(len(words) - len(expected) + 1)
    )


def repetition_rate(token_ids: list[int], n: int) -> float:
    """Share of the answer's n-grams that repeat an earlier one (0 when it has none)."""
    grams = [tuple(token_ids[i : i + n]) for i in range(len(token_ids) - n + 1)]
    return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


@torch.inference_mode()
def perplexity(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], block_size: int,
               batch_size: int) -> float:
    """exp of the mean next-token loss over packed windows of `texts`."""
    blocks = pack_texts(tokenizer, texts, block_size)
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        batch = default_data_collator(blocks[start : start + batch_size])
        batch = {key: value.to(model.device) for key, value in batch.items()}
        tokens = batch["labels"][:, 1:].numel()
        total += float(model(**batch).loss) * tokens
        count += tokens
    return math.exp(total / count)
