"""Padding, shared by training and evaluation: the label id the loss ignores and a pad token for tokenizers
without one. A module of its own so that the evaluate stages do not depend on the training code."""
from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # labels of prompt and padded positions: the loss skips them


def with_pad_token(tokenizer: PreTrainedTokenizerBase, source: Path) -> PreTrainedTokenizerBase:
    """`tokenizer`, padding with its end-of-sequence token when it has no pad token (most hub base models have
    none): padded positions are masked out, so the id only has to exist."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{source}: the tokenizer has neither a pad nor an end-of-sequence token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
