"""Every merge method, named once: how it combines task vectors, whether it needs a whole tensor at a time, and
where it comes from. Torch-free, so the config validates `merge.method` against it without loading torch; the
function of each method is the one of the same name in `pipelines.merge.methods`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class MergeMethodInfo:
    """One method: its name (params and function), whole-tensor or blockwise, and its reference."""

    name: str
    whole_tensor: bool  # a magnitude threshold or one random draw per tensor: not streamable in blocks
    reference: str


METHODS = {info.name: info for info in (
    MergeMethodInfo("task_arithmetic", False, "Ilharco et al. 2023, Editing Models with Task Arithmetic; with one "
                    "vector, the chat-vector paper's formula (Huang et al. 2024, arXiv 2310.04799)"),
    MergeMethodInfo("ties", True, "Yadav et al. 2023, TIES-Merging: trim, elect sign, disjoint mean"),
    MergeMethodInfo("dare_linear", True, "Yu et al. 2024, DARE: drop and rescale, then the weighted sum"),
)}
MergeMethod = Literal[tuple(METHODS)]  # type: ignore[valid-type]  # the names above, for pydantic
