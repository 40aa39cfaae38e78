"""What a merge did, per tensor and as a whole: written beside the merged model and logged to its MLflow run."""
from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.merge.vocabulary import NO_ROW, VocabularyPlan


@dataclass(frozen=True)
class TensorReport:
    """What the merge did to one tensor."""

    name: str
    action: str
    ratio: float
    delta_norm: float
    relative_change: float
    rows_with_delta: int | None = None


@dataclass(frozen=True)
class MergeReport:
    """The whole merge: settings, vocabulary, and each tensor's report."""

    ratio: float
    method: str
    embedding_rows: str
    vectors: list[str]
    vocabulary: dict[str, object]
    files: list[str]
    tensors: list[TensorReport] = field(default_factory=list)



def vocabulary_summary(vocabulary: VocabularyPlan | None) -> dict[str, object]:
    """The vocabulary plan in numbers: rows, where they come from, the tokens added (empty without a plan)."""
    if vocabulary is None:
        return {}
    return {"rows": vocabulary.rows, "rows_from_cp": int((vocabulary.cp != NO_ROW).sum()),
            "rows_from_chat": int((vocabulary.chat != NO_ROW).sum()), "added_tokens": vocabulary.added_tokens}
