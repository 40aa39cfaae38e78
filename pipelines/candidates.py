"""The models the leaderboard ranks, by name: the references (base, chat, cp), merged-<ratio> and
aligned-<method>, and where each one's checkpoint is."""
from __future__ import annotations

from pathlib import Path

from pipelines.layout import Layout

REFERENCE_CANDIDATES = ("base", "chat", "cp")
MERGED_PREFIX = "merged-"
ALIGNED_PREFIX = "aligned-"
COMPETING_PREFIXES = (MERGED_PREFIX, ALIGNED_PREFIX)  # candidates that can win; the references only show the way


def merged_name(ratio: float | str) -> str:
    """The candidate name of the merge at `ratio` (as written in merge.ratios)."""
    return f"{MERGED_PREFIX}{ratio}"


def aligned_name(method: str) -> str:
    """The candidate name of the best merged model aligned with `method`."""
    return f"{ALIGNED_PREFIX}{method}"


def candidate_dir(layout: Layout, candidate: str) -> Path:
    """The checkpoint of a named candidate: base, chat, cp, merged-<ratio> or aligned-<method>."""
    from pipelines.upstream.manifest import read_upstream  # the training stack: only when a base or chat path is asked

    if candidate in ("base", "chat"):
        return getattr(read_upstream(layout.upstream), candidate)
    if candidate == "cp":
        return layout.cp_model
    if candidate.startswith(MERGED_PREFIX):
        return layout.merged_model(candidate.removeprefix(MERGED_PREFIX))
    if candidate.startswith(ALIGNED_PREFIX):
        return layout.aligned_model(candidate.removeprefix(ALIGNED_PREFIX))
    raise ValueError(f"unknown candidate {candidate!r}: expected base, chat, cp, merged-<ratio> or aligned-<method>")
