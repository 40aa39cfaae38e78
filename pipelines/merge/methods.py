"""Ways to combine task vectors (tuned - base, in fp32) into the one delta added to CP.

- task_arithmetic: the weighted sum (Ilharco et al.); with one vector this is the chat-vector paper's formula.
- ties: trim each vector to its largest-magnitude `density` share, elect a sign per parameter from the sum,
  and average the values that agree with it (Yadav et al., TIES-Merging).
- dare_linear: drop each entry with probability 1 - density, rescale the rest by 1 / density, then the
  weighted sum (Yu et al., DARE).
Each is named once, in `pipelines.merge.registry` (with whether it needs a whole tensor at a time); every method
here takes (deltas, weights, options) and has the name it is registered under.
"""
from __future__ import annotations

import sys
import zlib
from dataclasses import dataclass

import torch

from pipelines.merge.registry import METHODS, MergeMethod


@dataclass(frozen=True)
class CombineOptions:
    """What a method may read besides the vectors: the share kept, the seed, and the tensor's name."""

    density: float = 1.0
    seed: int = 0
    tensor_name: str = ""


def task_arithmetic(deltas: list[torch.Tensor], weights: list[float],
                    options: CombineOptions = CombineOptions()) -> torch.Tensor:
    """sum_k weight_k * delta_k, reusing the first delta's memory (x * 1.0 is x: that pass is skipped)."""
    total = deltas[0] if weights[0] == 1.0 else deltas[0].mul_(weights[0])
    for delta, weight in zip(deltas[1:], weights[1:]):
        total.add_(delta if weight == 1.0 else delta.mul_(weight))
    return total


def _trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Zero all but the `density` share of entries with the largest magnitude."""
    keep = max(1, round(density * delta.numel()))
    if keep >= delta.numel():
        return delta
    magnitude = delta.abs().flatten()
    threshold = magnitude.kthvalue(delta.numel() - keep + 1).values
    return torch.where(delta.abs() >= threshold, delta, 0.0)


def ties(deltas: list[torch.Tensor], weights: list[float], options: CombineOptions) -> torch.Tensor:
    """TIES-Merging: trim, elect sign, disjoint mean."""
    weighted = torch.stack([_trim(d, options.density) * w for d, w in zip(deltas, weights)])
    elected = torch.sign(weighted.sum(dim=0))
    agrees = (torch.sign(weighted) == elected) & (weighted != 0)
    count = agrees.sum(dim=0).clamp(min=1)
    return (weighted * agrees).sum(dim=0) / count


def dare_linear(deltas: list[torch.Tensor], weights: list[float], options: CombineOptions) -> torch.Tensor:
    """DARE: random drop and rescale of each vector, then the weighted sum; seeded per tensor name."""
    density = options.density
    generator = torch.Generator().manual_seed(options.seed * 1_000_003 + zlib.crc32(options.tensor_name.encode()))
    rescaled = []
    for delta in deltas:
        kept = torch.rand(delta.shape, generator=generator) < density
        rescaled.append(delta * kept / density)
    return task_arithmetic(rescaled, weights)


def combine(method: MergeMethod, deltas: list[torch.Tensor], weights: list[float],
            options: CombineOptions) -> torch.Tensor:
    """The delta that the registered `method` makes of the task vectors of one tensor (or one block of it)."""
    return getattr(sys.modules[__name__], METHODS[method].name)(deltas, weights, options)
