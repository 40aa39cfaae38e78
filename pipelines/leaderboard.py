"""The `leaderboard` stage: ranks every evaluated candidate and names the winner by the rule in `promote`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.atomic import write_json_atomic
from pipelines.config import MergeParams, PromoteParams
from pipelines.evaluate import MERGED_PREFIX, REFERENCE_CANDIDATES
from pipelines.promotion import rank_candidates


def candidate_names(merge: MergeParams) -> list[str]:
    """Every model the evaluate stages score: the references, then one per merge ratio."""
    return [*REFERENCE_CANDIDATES, *(f"{MERGED_PREFIX}{ratio}" for ratio in merge.ratios)]


def build_leaderboard(names: list[str], metrics_dir: Path, policy: PromoteParams, out: Path) -> dict[str, Any]:
    """Read each candidate's metrics, rank them, and write the leaderboard with the winner and why.

    base, chat and cp are ranked for reference; only merged models can win.
    """
    metrics = {}
    for name in names:
        path = metrics_dir / f"{name}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no metrics for candidate {name!r}; run its evaluate stage")
        metrics[name] = json.loads(path.read_text())
    ranked = rank_candidates(metrics, policy)
    winner = next((r for r in ranked if r.eligible and r.name.startswith(MERGED_PREFIX)), None)
    board = {
        "winner": winner.name if winner else None,
        "primary_metric": policy.primary_metric,
        "reason": (f"highest {policy.primary_metric} among merged models meeting every guardrail" if winner
                   else "no merged model meets every guardrail"),
        "candidates": {
            r.name: {"rank": i + 1, "role": "candidate" if r.name.startswith(MERGED_PREFIX) else "reference",
                     "eligible": r.eligible, "violations": r.violations, **r.metrics}
            for i, r in enumerate(ranked)
        },
    }
    write_json_atomic(out, board)
    return board
