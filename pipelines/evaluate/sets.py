"""Evaluation sets: jsonl files of conversations with a reference answer or a harmfulness label.

One line per example: `{"messages": [{"role": "user", "content": "..."}, ...], "reference": "...", "tags": [...]}`
for instruction-following and multi-turn sets (the last turn is the user's; the model answers it), and
`{"messages": [...], "harmful": true|false, "tags": [...]}` for the safety set.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipelines.atomic import numbered_jsonl


class Turn(BaseModel):
    """One message of a conversation."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class EvalExample(BaseModel):
    """One conversation to answer, with what a good answer is."""

    model_config = ConfigDict(extra="forbid")
    messages: list[Turn] = Field(min_length=1, description="the conversation so far; the last turn is the user's")
    reference: str | None = Field(None, description="the answer's expected content")
    harmful: bool | None = Field(None, description="safety sets: whether the request should be refused")
    tags: list[str] = Field(default_factory=list, description="free labels (attribute, category, ...)")

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, messages: list[Turn]) -> list[Turn]:
        if messages and messages[-1].role != "user":
            raise ValueError(f"the last message must be the user's, got {messages[-1].role!r}")
        return messages

    def conversation(self) -> list[dict[str, str]]:
        """The messages as plain dicts, for the chat template."""
        return [turn.model_dump() for turn in self.messages]


def load_eval_set(path: Path, needs: Literal["reference", "harmful"], limit: int | None = None) -> list[EvalExample]:
    """Read and validate a set; an error names the file, the line and the key at fault. An empty set is an error."""
    examples = []
    for number, record in numbered_jsonl(path):
        try:
            example = EvalExample.model_validate(record)
        except ValidationError as error:
            problem = error.errors()[0]
            key = ".".join(str(part) for part in problem["loc"]) or "(line)"
            raise ValueError(f"{path}:{number}: {key}: {problem['msg']}") from None
        if getattr(example, needs) is None:
            raise ValueError(f"{path}:{number}: {needs}: required in this set")
        examples.append(example)
    if not examples:
        raise ValueError(f"{path}: no examples (an empty evaluation set)")
    return examples[:limit]
