"""The `leaderboard` stage: ranks every evaluated candidate and names the winner by the rule in `promote`."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.atomic import write_json_atomic
from pipelines.config import Params, PromoteParams
from pipelines.candidates import (
    COMPETING_PREFIXES, REFERENCE_CANDIDATES, aligned_name, finetuned_merged_name, merged_name,
)
from pipelines.promotion import rank_candidates


ROW_FIELDS = ("rank", "role", "eligible", "violations")  # a row's bookkeeping in the file; every other key is a metric


@dataclass(frozen=True)
class LeaderboardRow:
    """One ranked model: where it stands, whether it may win, and its metrics."""

    name: str
    rank: int
    role: str  # candidate (merged and aligned models compete) | reference (base, chat, cp)
    eligible: bool
    violations: list[str]
    metrics: dict[str, float]

    def as_json(self) -> dict[str, Any]:
        """The row as metrics/leaderboard.json holds it: bookkeeping and metrics side by side."""
        return {"rank": self.rank, "role": self.role, "eligible": self.eligible, "violations": self.violations,
                **self.metrics}


@dataclass(frozen=True)
class Leaderboard:
    """What the leaderboard stage decided: the rows in rank order, the winner (None: no eligible model) and why."""

    winner: str | None
    primary_metric: str
    reason: str
    rows: list[LeaderboardRow]

    def row(self, name: str) -> LeaderboardRow:
        """The row of model `name`."""
        return next(row for row in self.rows if row.name == name)

    def as_json(self) -> dict[str, Any]:
        """The leaderboard report's content: every row, bookkeeping and metrics."""
        return {"winner": self.winner, "primary_metric": self.primary_metric, "reason": self.reason,
                "candidates": {row.name: row.as_json() for row in self.rows}}

    @classmethod
    def read(cls, path: Path) -> "Leaderboard":
        """The leaderboard the stage wrote to `path`."""
        board = json.loads(path.read_text())
        rows = [LeaderboardRow(name, row["rank"], row["role"], row["eligible"], row["violations"],
                               {key: value for key, value in row.items() if key not in ROW_FIELDS})
                for name, row in board["candidates"].items()]
        return cls(board["winner"], board["primary_metric"], board["reason"], sorted(rows, key=lambda r: r.rank))

    def summary(self) -> dict[str, Any]:
        """The DVC metric of the ranking, narrow enough for `dvc metrics show`: the winner and its primary metric
        (each model's scores are in its own metrics file)."""
        if self.winner is None:
            return {"winner": {"name": None}}
        primary = self.row(self.winner).metrics.get(self.primary_metric)
        return {"winner": {"name": self.winner, self.primary_metric: primary}}


def candidate_names(params: Params) -> list[str]:
    """Every model the evaluate stages score: the references, one per merge ratio, one per align method, one per
    fine-tuning method and ratio of the fine-tuned-first family."""
    return [*REFERENCE_CANDIDATES, *map(merged_name, params.merge.ratios), *map(aligned_name, params.align.methods),
            *(finetuned_merged_name(method, ratio) for method in params.finetune.methods
              for ratio in params.finetune.ratios)]


def read_metrics(metric_files: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Each candidate's metrics (`name -> file`); a missing file is named with the stage that writes it."""
    metrics = {}
    for name, path in metric_files.items():
        if not path.exists():
            raise FileNotFoundError(f"{path}: no metrics for candidate {name!r}; run its evaluate stage")
        metrics[name] = json.loads(path.read_text())
    return metrics


def build_leaderboard(metric_files: dict[str, Path], policy: PromoteParams, report: Path, summary: Path) -> Leaderboard:
    """Read each candidate's metrics (`name -> file`), rank them, and write every row with the winner and why to
    `report`, the winner and its primary metric to `summary`.

    base, chat and cp are ranked for reference; merged, aligned and fine-tuned-then-merged models compete.
    """
    ranked = rank_candidates(read_metrics(metric_files), policy)
    winner = next((r for r in ranked if r.eligible and r.name.startswith(COMPETING_PREFIXES)), None)
    board = Leaderboard(
        winner=winner.name if winner else None,
        primary_metric=policy.primary_metric,
        reason=(f"highest {policy.primary_metric} among the merged, aligned and fine-tuned-then-merged models "
                "meeting every guardrail"
                if winner else "no merged, aligned or fine-tuned-then-merged model meets every guardrail"),
        rows=[LeaderboardRow(r.name, i + 1, "candidate" if r.name.startswith(COMPETING_PREFIXES) else "reference",
                             r.eligible, r.violations, r.metrics) for i, r in enumerate(ranked)],
    )
    write_json_atomic(report, board.as_json())
    write_json_atomic(summary, board.summary())
    return board
