"""The models the leaderboard ranks, by name: the references (base, chat, cp), merged-<ratio> (CP + chat vector),
aligned-<method> (the best of those fine-tuned) and finetuned-<method>-merged-<ratio> (CP fine-tuned, then + chat
vector), and where each one's checkpoint is."""
from __future__ import annotations

from pathlib import Path

from pipelines.layout import Layout

REFERENCE_CANDIDATES = ("base", "chat", "cp")
MERGED_PREFIX = "merged-"
ALIGNED_PREFIX = "aligned-"
FINETUNED_PREFIX = "finetuned-"
# candidates that can win; the references only show the way
COMPETING_PREFIXES = (MERGED_PREFIX, ALIGNED_PREFIX, FINETUNED_PREFIX)


def merged_name(ratio: float | str) -> str:
    """The candidate name of the merge at `ratio` (as written in merge.ratios)."""
    return f"{MERGED_PREFIX}{ratio}"


def aligned_name(method: str) -> str:
    """The candidate name of the best merged model aligned with `method`."""
    return f"{ALIGNED_PREFIX}{method}"


def finetuned_merged_name(method: str, ratio: float | str) -> str:
    """The candidate name of CP fine-tuned with `method`, then merged with the chat vector at `ratio`."""
    return f"{FINETUNED_PREFIX}{method}-merged-{ratio}"


def finetuned_merged_parts(candidate: str) -> tuple[str, str]:
    """The method and ratio (as written) a finetuned-<method>-merged-<ratio> name carries."""
    method, _, ratio = candidate.removeprefix(FINETUNED_PREFIX).partition("-merged-")
    return method, ratio


def candidate_dir(layout: Layout, candidate: str) -> Path:
    """The checkpoint of a named candidate: base, chat, cp, merged-<ratio>, aligned-<method> or
    finetuned-<method>-merged-<ratio>."""
    from pipelines.upstream.manifest import read_upstream  # the training stack: only when a base or chat path is asked

    if candidate in ("base", "chat"):
        return getattr(read_upstream(layout.upstream), candidate)
    if candidate == "cp":
        return layout.cp_model
    if candidate.startswith(MERGED_PREFIX):
        return layout.merged_model(candidate.removeprefix(MERGED_PREFIX))
    if candidate.startswith(ALIGNED_PREFIX):
        return layout.aligned_model(candidate.removeprefix(ALIGNED_PREFIX))
    if candidate.startswith(FINETUNED_PREFIX) and all(finetuned_merged_parts(candidate)):
        return layout.finetuned_merged_model(*finetuned_merged_parts(candidate))
    raise ValueError(f"unknown candidate {candidate!r}: expected base, chat, cp, merged-<ratio>, aligned-<method> or "
                     "finetuned-<method>-merged-<ratio>")
