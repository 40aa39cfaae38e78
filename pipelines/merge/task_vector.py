"""Task vectors (tuned - base) read lazily from checkpoint pairs, and the vocabulary rows each one gives a delta to."""
from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from pipelines.config import MergeSettings
from pipelines.layout import NEW_TOKENS
from pipelines.merge.checkpoint import CheckpointError, SafetensorsCheckpoint
from pipelines.merge.vocabulary import (
    DeltaRows, VocabularyPlan, chat_special_tokens, check_tokenizer_rows, load_tokenizer, plan_vocabulary, row_tokens,
)


@dataclass(frozen=True)
class TaskVector:
    """tuned - base, read lazily from two checkpoints; `rows`: the vocabulary rows it gives a delta to."""

    name: str
    base: SafetensorsCheckpoint
    tuned: SafetensorsCheckpoint
    ratio: float
    rows: DeltaRows | None = None

    def checkpoints(self) -> dict[str, SafetensorsCheckpoint]:
        """The two checkpoints by the role names errors use ("base"/"chat" for the chat vector)."""
        if self.name == "chat":
            return {"base": self.base, "chat": self.tuned}
        return {f"{self.name} base": self.base, f"{self.name} tuned": self.tuned}



def open_task_vectors(base: Path, chat: Path, ratio: float, settings: MergeSettings,
                      stack: ExitStack) -> list[TaskVector]:
    """The chat vector (chat - base, at `ratio`) and any further ones (`merge.vectors`), open until `stack` ends."""
    sources = [("chat", base, chat, ratio)] + [(v.name, Path(v.base), Path(v.tuned), v.ratio) for v in settings.vectors]
    return [TaskVector(name, stack.enter_context(SafetensorsCheckpoint(b, settings.allow_pickle)),
                       stack.enter_context(SafetensorsCheckpoint(t, settings.allow_pickle)), r)
            for name, b, t, r in sources]


def plan_merge_vocabulary(cp: SafetensorsCheckpoint, vectors: list[TaskVector], names: set[str],
                          tokenizer: PreTrainedTokenizerBase, added: list[str],
                          chat_tokenizer: PreTrainedTokenizerBase,
                          settings: MergeSettings) -> tuple[VocabularyPlan | None, list[TaskVector]]:
    """Where each row of the merged vocabulary matrices comes from, and the vectors with the rows each gives a delta
    to (`merge.embedding_rows`; tokens CP added get the mean delta of their pieces under `overlap`). None and the
    vectors as given when the checkpoints have no vocabulary matrix."""
    present = sorted(names & set(cp.names()))
    if not present:
        return None, vectors
    name = present[0]
    tokens: dict[Path, list[str | None]] = {}  # base and CP often share one tokenizer: read each once

    def tokens_of(checkpoint: SafetensorsCheckpoint) -> list[str | None]:
        key = checkpoint.model_dir.resolve()
        if key not in tokens:
            tokenizer, rows = load_tokenizer(checkpoint.model_dir), checkpoint.shape(name)[0]
            check_tokenizer_rows(checkpoint.model_dir, tokenizer, name, rows)
            tokens[key] = row_tokens(tokenizer, rows)
        return tokens[key]

    plan = plan_vocabulary(tokenizer, added, tokens_of(cp), tokens_of(vectors[0].tuned))
    specials = set(chat_special_tokens(chat_tokenizer))
    new_tokens = _new_token_pieces(cp.model_dir, tokens_of(cp)) if settings.embedding_rows == "overlap" else {}
    planned = []
    for vector in vectors:
        base_tokens, tuned_tokens = tokens_of(vector.base), tokens_of(vector.tuned)
        rows = plan.delta_rows(base_tokens, tuned_tokens, settings.embedding_rows, specials)
        rows = plan.with_pieces(rows, new_tokens, base_tokens, tuned_tokens) if new_tokens else rows
        planned.append(replace(vector, rows=rows))
    return plan, planned


def _new_token_pieces(cp_dir: Path, cp_tokens: list[str | None]) -> dict[str, list[str]]:
    """The tokens CP added to its base's vocabulary (models/cp/new_tokens.json) and their pieces as token strings."""
    path = cp_dir / NEW_TOKENS
    if not path.exists():
        return {}
    try:
        mapping = json.loads(path.read_text())
        return {token: [cp_tokens[i] for i in row["pieces"]] for token, row in mapping.items()}
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise CheckpointError(f"{path}: not a token -> {{id, pieces}} mapping CP wrote: {error}") from None
