"""Scores of answers and of held-out text; pure functions of their inputs."""
from __future__ import annotations

import math
import re
import string

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipelines.training.data import IGNORE_INDEX

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
def perplexity(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], max_tokens: int,
               batch_size: int) -> float:
    """exp of the mean next-token loss over the tokens of each document, scored one document per row.

    Documents are not joined: the separator would be whatever the tokenizer calls EOS, which differs between a base
    and a chat model, and would be scored as if it were text.
    """
    tokenizer.padding_side = "right"
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, max_length=max_tokens,
                          add_special_tokens=False, return_tensors="pt").to(model.device)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
        tokens = int((labels[:, 1:] != IGNORE_INDEX).sum())
        total += float(model(**batch, labels=labels).loss) * tokens
        count += tokens
    return math.exp(total / count)
