"""Vocabulary extension for a new language: tokens trained on the target corpus join the base tokenizer, and each
new embedding row starts as the mean of the rows of the pieces the old tokenizer split it into."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from tokenizers import AddedToken
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def train_new_tokens(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str], count: int,
                     min_frequency: int = 2) -> list[str]:
    """Up to `count` tokens, as text, that a tokenizer of the same kind trained on `texts` has and the base splits
    into several pieces, most frequent merges first. Where the trained tokens mark word starts with a space, only
    word-initial ones are kept: an added token is matched anywhere, so a word-inner piece would cut other words.
    Byte-level merges that end inside a character are left out."""
    if not tokenizer.is_fast:
        raise ValueError("cp.new_tokens needs a fast (Rust) tokenizer to train on the target corpus")
    trained = tokenizer.train_new_from_iterator(texts, vocab_size=len(tokenizer) + 4 * count,
                                                min_frequency=min_frequency)
    known = tokenizer.get_vocab()
    by_rank = [token for token, _ in sorted(trained.get_vocab().items(), key=lambda item: item[1])]
    candidates = [trained.convert_tokens_to_string([t]) for t in by_rank if t not in known]
    # a byte-level merge may stop inside a character: its text holds U+FFFD and matches nothing real
    candidates = [text for text in candidates
                  if text.strip() and "\ufffd" not in text and len(tokenizer.tokenize(text)) > 1]
    if any(text.startswith(" ") for text in candidates):
        candidates = [text for text in candidates if text.startswith(" ")]
    return list(dict.fromkeys(candidates))[:count]


def extend_vocabulary(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                      tokens: list[str]) -> dict[str, dict]:
    """Add `tokens` to the tokenizer, grow the model's input and output embeddings, and set each new row to the
    mean of its pieces' rows under the old tokenizer; return `token -> {id, pieces}` (the mapping, for the merge)."""
    pieces = {text: tokenizer(text, add_special_tokens=False)["input_ids"] for text in tokens}
    tokenizer.add_tokens([AddedToken(text, normalized=False, single_word=not text.startswith(" ")) for text in tokens])
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    matrices = [model.get_input_embeddings().weight]
    if model.get_output_embeddings() is not None and not model.config.tie_word_embeddings:
        matrices.append(model.get_output_embeddings().weight)
    mapping = {}
    with torch.no_grad():
        for text, old in pieces.items():
            new_id = tokenizer.convert_tokens_to_ids(text)
            for matrix in matrices:
                matrix[new_id] = matrix[old].mean(dim=0)
            mapping[text] = {"id": new_id, "pieces": old}
    return mapping
