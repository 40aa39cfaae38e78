"""Per-example loss weights (C-RLFT's class weights): a collator that carries them, a Trainer that applies them."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional
from transformers import Trainer

from pipelines.padding import IGNORE_INDEX

LOSS_WEIGHT = "loss_weight"


@dataclass(frozen=True)
class WeightedCollator:
    """Collate with `inner`, then add each example's `loss_weight` as a float tensor."""

    inner: Callable[[list[dict[str, Any]]], dict[str, Any]]

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner([{k: v for k, v in f.items() if k != LOSS_WEIGHT} for f in features])
        batch[LOSS_WEIGHT] = torch.tensor([float(f[LOSS_WEIGHT]) for f in features])
        return batch


class WeightedLossTrainer(Trainer):
    """The Trainer, with each example's token losses scaled by its `loss_weight` when batches carry one.

    The weighted sum is divided by the count of labelled tokens, not by the weights: a batch of low-weight
    examples teaches less, which is the point of the weights.
    """

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | None = None) -> Any:
        weights = inputs.pop(LOSS_WEIGHT, None)
        if weights is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        targets = labels[:, 1:]
        token_loss = functional.cross_entropy(outputs.logits[:, :-1].float().transpose(1, 2), targets,
                                              ignore_index=IGNORE_INDEX, reduction="none")
        labelled = targets != IGNORE_INDEX
        loss = (token_loss * weights[:, None] * labelled).sum() / labelled.sum().clamp(min=1)
        return (loss, outputs) if return_outputs else loss
