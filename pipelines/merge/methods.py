"""Ways to combine task vectors (tuned - base, in fp32) into the one delta added to CP.

- task_arithmetic: the weighted sum (Ilharco et al.); with one vector this is the chat-vector paper's formula.
- ties: trim each vector to its largest-magnitude `density` share, elect a sign per parameter from the sum,
  and average the values that agree with it (Yadav et al., TIES-Merging).
- dare_linear: drop each entry with probability 1 - density, rescale the rest by 1 / density, then the
  weighted sum (Yu et al., DARE).
ties and dare_linear need a whole tensor at a time (a magnitude threshold, one random draw per tensor);
task_arithmetic works on any slice, so the engine streams it in small blocks.
"""
from __future__ import annotations

import zlib
from typing import Literal

import torch

MergeMethod = Literal["task_arithmetic", "ties", "dare_linear"]
WHOLE_TENSOR_METHODS = {"ties", "dare_linear"}


def task_arithmetic(deltas: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
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


def ties(deltas: list[torch.Tensor], weights: list[float], density: float) -> torch.Tensor:
    """TIES-Merging: trim, elect sign, disjoint mean."""
    weighted = torch.stack([_trim(d, density) * w for d, w in zip(deltas, weights)])
    elected = torch.sign(weighted.sum(dim=0))
    agrees = (torch.sign(weighted) == elected) & (weighted != 0)
    count = agrees.sum(dim=0).clamp(min=1)
    return (weighted * agrees).sum(dim=0) / count


def dare_linear(deltas: list[torch.Tensor], weights: list[float], density: float, seed: int,
                tensor_name: str) -> torch.Tensor:
    """DARE: random drop and rescale of each vector, then the weighted sum; seeded per tensor name."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(tensor_name.encode()))
    rescaled = []
    for delta in deltas:
        kept = torch.rand(delta.shape, generator=generator) < density
        rescaled.append(delta * kept / density)
    return task_arithmetic(rescaled, weights)


def combine(method: MergeMethod, deltas: list[torch.Tensor], weights: list[float], density: float, seed: int,
            tensor_name: str) -> torch.Tensor:
    """The delta that `method` makes of the task vectors of one tensor (or one block of it)."""
    if method == "ties":
        return ties(deltas, weights, density)
    if method == "dare_linear":
        return dare_linear(deltas, weights, density, seed, tensor_name)
    return task_arithmetic(deltas, weights)
