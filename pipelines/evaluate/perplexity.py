"""Target-language perplexity on held-out text."""
from __future__ import annotations

import math

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipelines.padding import IGNORE_INDEX


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
