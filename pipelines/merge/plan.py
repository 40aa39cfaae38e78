"""Before any value is written: check that the inputs fit together, and decide what happens to each tensor."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch

from pipelines.config import TensorRule
from pipelines.merge.checkpoint import CheckpointError, SafetensorsCheckpoint

CONFIG = "config.json"
IN_A_BLOCK = re.compile(r"\.\d+\.")  # tensors of the repeated layers: model.layers.3.mlp...

# config.json is read as JSON, not through AutoConfig: importing an architecture's config class costs seconds,
# more than merging a 1B model, and the merge needs only these few keys.


def read_config(model_dir: Path) -> dict[str, Any]:
    """A model's config.json as a dict; the error names the file."""
    path = model_dir / CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # ValueError: not JSON, or not UTF-8
        raise CheckpointError(f"{path}: no usable model config: {error}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: no usable model config: expected a JSON object, got {type(config).__name__}")
    return config


def vocab_size(config: dict[str, Any]) -> int | None:
    """The vocabulary size of a config (of its text model for multimodal configs)."""
    return config.get("vocab_size") or config.get("text_config", {}).get("vocab_size")


def check_architectures(configs: dict[str, dict[str, Any]]) -> None:
    """All models share one architecture (model type and class), or the error lists each."""
    kinds = {role: (c.get("model_type"), tuple(c.get("architectures") or ())) for role, c in configs.items()}
    if len(set(kinds.values())) != 1:
        listed = ", ".join(f"{role} {kind[0]} {list(kind[1])}" for role, kind in kinds.items())
        raise CheckpointError(f"architectures differ: {listed}")


def vocabulary_tensor_names(checkpoint: SafetensorsCheckpoint, config: dict[str, Any]) -> set[str]:
    """The embedding and lm_head weights: 2-D tensors outside the repeated layers with one row per token."""
    rows = vocab_size(config)
    shapes = {name: checkpoint.shape(name) for name in checkpoint.names() if not IN_A_BLOCK.search(name)}
    return {name for name, shape in shapes.items() if len(shape) == 2 and shape[0] == rows}


@dataclass(frozen=True)
class TensorPlan:
    """What the merge does to one tensor."""

    name: str
    action: str  # "add" or "skip"
    weights: tuple[float, ...]  # one per task vector
    vocabulary: bool
    meta: torch.Tensor  # output dtype and shape, on the meta device

    @property
    def adds(self) -> bool:
        return self.action == "add" and any(self.weights)


def rule_for(name: str, rules: list[TensorRule]) -> TensorRule | None:
    """The first rule whose glob matches the tensor name."""
    return next((rule for rule in rules if fnmatchcase(name, rule.pattern)), None)


def _check_tensor(name: str, cp: torch.Tensor, others: dict[str, torch.Tensor], vocabulary: bool) -> None:
    for role, tensor in others.items():
        same = cp.shape[1:] == tensor.shape[1:] if vocabulary else cp.shape == tensor.shape
        if not same:
            raise CheckpointError(f"tensor {name!r}: shapes differ: cp {tuple(cp.shape)}, {role} {tuple(tensor.shape)}")


def plan_tensors(cp: SafetensorsCheckpoint, others: dict[str, SafetensorsCheckpoint], ratios: list[float],
                 rules: list[TensorRule], vocabulary_names: set[str], vocabulary_rows: int) -> list[TensorPlan]:
    """One plan per CP tensor; every other checkpoint must hold the same names and shapes (rows of the
    vocabulary matrices excepted, they are matched by token)."""
    names = cp.names()
    for role, checkpoint in others.items():
        extra = sorted(set(checkpoint.names()) - set(names))
        if extra:
            raise CheckpointError(f"{checkpoint.model_dir} ({role}) has tensor {extra[0]!r} that cp lacks")
    plans = []
    for name in names:
        tensor = cp.get(name)
        vocabulary = name in vocabulary_names
        _check_tensor(name, tensor, {role: ck.get(name) for role, ck in others.items()}, vocabulary)
        rule = rule_for(name, rules)
        weights = list(ratios)
        if rule is not None and rule.ratio is not None:
            weights[0] = rule.ratio  # a rule's ratio is the chat vector's; further vectors keep theirs
        shape = (vocabulary_rows, *tensor.shape[1:]) if vocabulary else tuple(tensor.shape)
        action = rule.action if rule else "add"
        if not tensor.is_floating_point():  # integer buffers are not weights: CP's stay
            action = "skip"
        plans.append(TensorPlan(name, action, tuple(weights), vocabulary,
                                torch.empty(shape, dtype=tensor.dtype, device="meta")))
    return plans
