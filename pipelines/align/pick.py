"""The `pick` stage: the merged model the align stages tune, chosen by the leaderboard's rule from the merged
models' scores. A file of its own, so that a score that moves without changing the pick retrains nothing."""
from __future__ import annotations

from pathlib import Path

from pipelines.atomic import write_json_atomic
from pipelines.config import PromoteParams
from pipelines.leaderboard import read_metrics
from pipelines.promotion import rank_candidates

PICKED = "merged"  # the key of the pick file that names the candidate


def pick_merged(metric_files: dict[str, Path], policy: PromoteParams, pick_path: Path) -> str:
    """Write to `pick_path` and return the merged candidate (`name -> metrics file`) the leaderboard would rank
    first: eligible first, then the primary metric."""
    picked = rank_candidates(read_metrics(metric_files), policy)[0].name
    write_json_atomic(pick_path, {PICKED: picked})
    return picked
