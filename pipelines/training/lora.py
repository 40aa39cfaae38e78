"""LoRA adapters through peft, shared by continual pretraining and alignment."""
from __future__ import annotations

from transformers import PreTrainedModel

from pipelines.config import LoraParams


def with_lora(model: PreTrainedModel, params: LoraParams, trainable_tokens: list[int] | None = None) -> PreTrainedModel:
    """The model wrapped with trainable LoRA adapters; everything else frozen but the opted-in embeddings, or
    only the rows of `trainable_tokens` (new tokens) of the input embeddings."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=params.rank, lora_alpha=params.alpha, lora_dropout=params.dropout,
                        target_modules=params.target_modules, task_type="CAUSAL_LM",
                        modules_to_save=["embed_tokens", "lm_head"] if params.train_embeddings else None,
                        trainable_token_indices={"embed_tokens": trainable_tokens} if trainable_tokens else None)
    return get_peft_model(model, config)
