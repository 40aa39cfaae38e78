"""Rows of the vocabulary matrices (embeddings, lm_head) matched by token string, not by index.

The merged model speaks with CP's tokenizer plus the chat model's template and end-of-turn tokens. For each
row of the output matrices this module says where the row starts from (a CP row, or a chat row for a token CP
lacks) and which base/tuned rows give its delta under the row policy.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from pipelines.merge.checkpoint import CheckpointError

RowPolicy = Literal["overlap", "specials", "skip"]
NO_ROW = -1


def load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a model; the error names the directory when there is none.

    A tokenizer.json is loaded as a fast tokenizer directly: AutoTokenizer would first import the
    architecture's config class, which takes longer than the whole merge of a small model.
    """
    try:
        if (model_dir / "tokenizer.json").exists():
            return PreTrainedTokenizerFast.from_pretrained(model_dir)
        return AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        raise ValueError(f"{model_dir}: no usable tokenizer: {error}") from None


def check_tokenizer_rows(model_dir: Path, tokenizer: PreTrainedTokenizerBase, tensor: str, rows: int) -> None:
    """Raise CheckpointError when the tokenizer has ids past the rows of the model's vocabulary matrix."""
    if len(tokenizer) > rows:
        raise CheckpointError(f"{model_dir}: the tokenizer has {len(tokenizer)} tokens but tensor {tensor!r} has "
                              f"{rows} rows: tokenizer and weights are not from the same model")


def chat_special_tokens(chat: PreTrainedTokenizerBase) -> list[str]:
    """The chat model's special and chat-template tokens (its added special tokens and named specials)."""
    added = [token.content for token in chat.added_tokens_decoder.values() if token.special]
    return list(dict.fromkeys(added + list(chat.all_special_tokens)))


def merged_tokenizer(cp: PreTrainedTokenizerBase, chat: PreTrainedTokenizerBase) -> tuple[PreTrainedTokenizerBase, list[str]]:
    """CP's tokenizer with the chat model's template, EOS and special tokens; returns it and the tokens it gained."""
    missing = [token for token in chat_special_tokens(chat) if token not in cp.get_vocab()]
    if missing:
        cp.add_tokens(missing, special_tokens=True)
    cp.chat_template = chat.chat_template
    cp.eos_token = chat.eos_token
    if cp.pad_token is None and chat.pad_token is not None:
        cp.pad_token = chat.pad_token
    return cp, missing


def row_tokens(tokenizer: PreTrainedTokenizerBase, rows: int) -> list[str | None]:
    """Token string of each matrix row; None for rows past the tokenizer (padding rows some models carry)."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(min(rows, len(tokenizer)))))
    return list(tokens) + [None] * (rows - len(tokens))


def _lookup(tokens: list[str | None], in_rows: list[str | None]) -> torch.Tensor:
    """For each token, its row in `in_rows` (unnamed rows match by index), or NO_ROW."""
    where = {token: row for row, token in enumerate(in_rows) if token is not None}
    return torch.tensor([
        where.get(token, NO_ROW) if token is not None else (row if row < len(in_rows) and in_rows[row] is None else NO_ROW)
        for row, token in enumerate(tokens)
    ], dtype=torch.long)


@dataclass(frozen=True)
class DeltaRows:
    """Rows of one task vector's base and tuned matrices that give each output row its delta (NO_ROW: none);
    `pieces` gives rows without a match (tokens CP added) the mean delta of several rows: output row ->
    (base rows, tuned rows)."""

    base: torch.Tensor
    tuned: torch.Tensor
    pieces: dict[int, tuple[list[int], list[int]]] = field(default_factory=dict)

    @property
    def direct(self) -> torch.Tensor:
        """Rows whose delta is one tuned row minus one base row."""
        return (self.base != NO_ROW) & (self.tuned != NO_ROW)

    @property
    def mask(self) -> torch.Tensor:
        mask = self.direct.clone()
        mask[list(self.pieces)] = True
        return mask


@dataclass(frozen=True)
class VocabularyPlan:
    """Where each output row of a vocabulary matrix comes from."""

    tokens: list[str | None]
    cp: torch.Tensor  # CP row per output row; NO_ROW where the token is new to CP
    chat: torch.Tensor  # chat-model row for the tokens new to CP; NO_ROW elsewhere
    added_tokens: list[str]

    @property
    def rows(self) -> int:
        return len(self.tokens)

    def delta_rows(self, base_tokens: list[str | None], tuned_tokens: list[str | None], policy: RowPolicy,
                   specials: set[str]) -> DeltaRows:
        """The base/tuned rows whose difference each output row receives under `policy`."""
        base, tuned = _lookup(self.tokens, base_tokens), _lookup(self.tokens, tuned_tokens)
        keep = self.cp != NO_ROW  # rows new to CP take the chat row as it is, no delta on top
        if policy == "skip":
            keep = torch.zeros_like(keep)
        elif policy == "specials":
            keep &= torch.tensor([token in specials for token in self.tokens], dtype=torch.bool)
        return DeltaRows(torch.where(keep, base, NO_ROW), torch.where(keep, tuned, NO_ROW))

    def with_pieces(self, rows: DeltaRows, new_tokens: dict[str, list[str]], base_tokens: list[str | None],
                    tuned_tokens: list[str | None]) -> DeltaRows:
        """`rows` plus, for each token CP added (`token -> the token strings of its pieces`), the mean delta of its
        pieces' rows, where every piece is in both the base and the tuned vocabulary."""
        base_at = {token: row for row, token in enumerate(base_tokens) if token is not None}
        tuned_at = {token: row for row, token in enumerate(tuned_tokens) if token is not None}
        out_at = {token: row for row, token in enumerate(self.tokens) if token is not None}
        pieces = {}
        for token, parts in new_tokens.items():
            row = out_at.get(token)
            if row is not None and rows.base[row] == NO_ROW and all(p in base_at and p in tuned_at for p in parts):
                pieces[row] = ([base_at[p] for p in parts], [tuned_at[p] for p in parts])
        return replace(rows, pieces=pieces)


def plan_vocabulary(out_tokenizer: PreTrainedTokenizerBase, added: list[str], cp_tokens: list[str | None],
                    chat_tokens: list[str | None]) -> VocabularyPlan:
    """Output rows: CP's rows (padding rows included), then any tokens the merged tokenizer gained."""
    tokens = row_tokens(out_tokenizer, max(len(cp_tokens), len(out_tokenizer)))
    cp = _lookup(tokens, cp_tokens)
    chat = torch.where(cp == NO_ROW, _lookup(tokens, chat_tokens), NO_ROW)
    orphans = [tokens[row] for row in ((cp == NO_ROW) & (chat == NO_ROW)).nonzero().flatten().tolist()]
    if orphans:
        raise ValueError(f"tokens in neither the CP nor the chat vocabulary: {orphans[:5]}")
    return VocabularyPlan(tokens, cp, chat, added)
