"""The `leaderboard` stage: ranks every evaluated candidate and names the winner by the rule in `promote`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.atomic import write_json_atomic
from pipelines.config import Params, PromoteParams
from pipelines.candidates import COMPETING_PREFIXES, REFERENCE_CANDIDATES, aligned_name, merged_name
from pipelines.promotion import rank_candidates


def candidate_names(params: Params) -> list[str]:
    """Every model the evaluate stages score: the references, one per merge ratio, one per align method."""
    return [*REFERENCE_CANDIDATES, *map(merged_name, params.merge.ratios), *map(aligned_name, params.align.methods)]


def read_metrics(metric_files: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Each candidate's metrics (`name -> file`); a missing file is named with the stage that writes it."""
    metrics = {}
    for name, path in metric_files.items():
        if not path.exists():
            raise FileNotFoundError(f"{path}: no metrics for candidate {name!r}; run its evaluate stage")
        metrics[name] = json.loads(path.read_text())
    return metrics


def build_leaderboard(metric_files: dict[str, Path], policy: PromoteParams, out: Path) -> dict[str, Any]:
    """Read each candidate's metrics (`name -> file`), rank them, and write the leaderboard with the winner and why.

    base, chat and cp are ranked for reference; merged and aligned models compete.
    """
    ranked = rank_candidates(read_metrics(metric_files), policy)
    winner = next((r for r in ranked if r.eligible and r.name.startswith(COMPETING_PREFIXES)), None)
    board = {
        "winner": winner.name if winner else None,
        "primary_metric": policy.primary_metric,
        "reason": (f"highest {policy.primary_metric} among merged and aligned models meeting every guardrail"
                   if winner else "no merged or aligned model meets every guardrail"),
        "candidates": {
            r.name: {"rank": i + 1, "role": "candidate" if r.name.startswith(COMPETING_PREFIXES) else "reference",
                     "eligible": r.eligible, "violations": r.violations, **r.metrics}
            for i, r in enumerate(ranked)
        },
    }
    write_json_atomic(out, board)
    return board
