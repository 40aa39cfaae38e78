"""Before any value is written: check that the inputs fit together, and decide what happens to each tensor."""
from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from pipelines.config import TensorRule
from pipelines.merge.checkpoint import CheckpointError, SafetensorsCheckpoint


def load_config(model_dir: Path) -> PretrainedConfig:
    """A model's config.json; the error names the directory."""
    try:
        return AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{model_dir}: no usable config.json: {error}") from None


def check_architectures(configs: dict[str, PretrainedConfig]) -> None:
    """All models share one architecture (model type and class), or the error lists each."""
    kinds = {role: (config.model_type, tuple(config.architectures or ())) for role, config in configs.items()}
    if len(set(kinds.values())) != 1:
        listed = ", ".join(f"{role} {kind[0]} {list(kind[1])}" for role, kind in kinds.items())
        raise CheckpointError(f"architectures differ: {listed}")


def vocabulary_tensor_names(config: PretrainedConfig) -> set[str]:
    """Names of the input and output embedding weights (one name for both when they are tied)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    matrices = {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    return {name for name, p in model.named_parameters(remove_duplicate=False) if id(p) in matrices}


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
