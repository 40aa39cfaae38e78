"""What a merge did, per tensor and as a whole: written beside the merged model and logged to its MLflow run."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipelines.atomic import write_json_atomic
from pipelines.config import MergeSettings
from pipelines.merge.vocabulary import NO_ROW, DeltaRows, VocabularyPlan
from pipelines.model_card import write_model_card

REPORT_IN_MODEL = "merge_report.json"  # the report, inside the merged model's folder too


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



def vocabulary_summary(vocabulary: VocabularyPlan | None, rows: DeltaRows | None) -> dict[str, object]:
    """The vocabulary plan in numbers: rows, where they come from, how many rows of tokens CP added got the mean
    delta of their pieces (the chat vector's `rows`), the tokens added (empty without a plan)."""
    if vocabulary is None:
        return {}
    return {"rows": vocabulary.rows, "rows_from_cp": int((vocabulary.cp != NO_ROW).sum()),
            "rows_from_chat": int((vocabulary.chat != NO_ROW).sum()),
            "rows_with_piece_delta": len(rows.pieces) if rows is not None else 0,
            "added_tokens": vocabulary.added_tokens}


def describe_merge(folder: Path, report: MergeReport, settings: MergeSettings, sources: dict[str, Path],
                   title: str, hub_ids: dict[str, str | None] | None = None) -> None:
    """Put the report and a model card (sources, with the hub ids `hub_ids` gives roles, settings, what changed) in
    the merged model's folder."""
    write_json_atomic(folder / REPORT_IN_MODEL, asdict(report))
    changed = [t for t in report.tensors if t.action != "skip"]
    facts: dict[str, object] = {
        "formula": f"cp + {report.ratio} * (chat - base)" + (" + further vectors" if len(report.vectors) > 1 else ""),
        "method": report.method, "embedding rows": report.embedding_rows,
        "tensors changed / kept as CP": f"{len(changed)} / {len(report.tensors) - len(changed)}",
        "mean relative change": f"{sum(t.relative_change for t in changed) / max(len(changed), 1):.4g}",
        "rules": json.dumps([rule.model_dump() for rule in settings.rules]) if settings.rules else "none",
        **({"density, seed": f"{settings.density}, {settings.seed}"} if report.method != "task_arithmetic" else {}),
        **{f"vocabulary {key}": value for key, value in report.vocabulary.items()},
        "report": f"`{REPORT_IN_MODEL}` (per tensor: action, ratio, delta norm, relative change)",
    }
    write_model_card(folder, title=title,
                     made_by="A chat-vector merge by chatgraft (arXiv 2310.04799): the continually pretrained "
                     "model plus the chat model's difference from its base.",
                     sources=sources, tags=["merge", "chat-vector", report.method], facts=facts, hub_ids=hub_ids)
