"""How much accelerator memory a CP run needs per process, from the model's config alone (no weights loaded).

The figures follow what the cp stage does (pipelines/training/precision.py): full fine-tuning holds float32 master
weights, gradients and AdamW's two states (16 bytes a parameter) and computes under bf16 autocast on GPU; LoRA keeps
the frozen weights in the checkpoint's dtype (config `dtype`) and its adapters, their gradients and states in
float32 (peft's default); the global batch split over the processes (DDP: every process holds a whole
copy of the model; FSDP: weights, gradients and optimizer state split over the processes, plus the two decoder
layers gathered at a time, in bf16 as the Trainer's mixed precision gathers them). Activations are the bf16
tensors a Llama-style layer keeps for the backward pass, about (8 x hidden + 4 x intermediate) values a token, with SDPA attention (no seq^2 term), plus
float32 logits and their gradient; with gradient checkpointing only each layer's input is kept, and one layer is
recomputed at a time. It is an estimate for planning: allocator slack and CUDA context (1-2 GiB) come on top.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

from pipelines.config import CPParams
from pipelines.training.precision import master_dtype

GIB = 2**30
ACTIVATION_BYTES = 2  # bf16 under autocast


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def _size(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per process, by what holds them."""

    parameters: int
    trainable: int
    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def table(self) -> str:
        """The estimate as aligned text lines, in GiB."""
        rows = [("parameters", _count(self.parameters)), ("trainable", _count(self.trainable))]
        rows += [(name, _size(getattr(self, name))) for name in ("weights", "gradients", "optimizer", "activations")]
        rows.append(("total per process", _size(self.total)))
        return "\n".join(f"{name:<18} {value:>12}" for name, value in rows)


def _meta_model(config: PretrainedConfig) -> torch.nn.Module:
    with torch.device("meta"):  # shapes only: no memory, no weights read
        return AutoModelForCausalLM.from_config(config)


def _lora_parameters(model: torch.nn.Module, params: CPParams) -> int:
    """Parameters of rank-r adapters on every linear layer whose name ends in a target module."""
    lora = params.lora
    assert lora is not None
    adapters = sum(lora.rank * (m.in_features + m.out_features) for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in lora.target_modules)
    embeddings = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" in name or "lm_head" in name)
    return adapters + (embeddings if lora.train_embeddings else 0)


def _activation_bytes(config: PretrainedConfig, params: CPParams) -> int:
    tokens = params.batch_size // params.distributed.processes * params.block_size
    hidden, layers = config.hidden_size, config.num_hidden_layers
    per_layer = tokens * (8 * hidden + 4 * config.intermediate_size) * ACTIVATION_BYTES
    kept = (layers * tokens * hidden * ACTIVATION_BYTES + per_layer) if params.gradient_checkpointing \
        else layers * per_layer
    logits = tokens * config.vocab_size * 4 * 2  # float32 logits and their gradient
    return kept + logits


def _gathered_layers(model: torch.nn.Module) -> int:
    """FSDP: bytes of the two decoder layers whose whole weights are gathered at a time (one computing, one
    prefetched), in bf16: accelerate's FSDP2 mixed precision policy gathers in the compute dtype."""
    layer = model.get_decoder().layers[0]
    return 2 * sum(p.numel() for p in layer.parameters()) * torch.bfloat16.itemsize


def estimate_cp_memory(config: PretrainedConfig, params: CPParams) -> MemoryEstimate:
    """Memory per process of a CP run with `params` on a model of `config`."""
    model = _meta_model(config)
    parameters = sum(p.numel() for p in model.parameters())
    weight_bytes = master_dtype(config, full_weights=params.lora is None).itemsize
    if params.lora is None:
        trainable, trained_bytes, weights = parameters, weight_bytes, parameters * weight_bytes
    else:
        trainable, trained_bytes = _lora_parameters(model, params), 4
        weights = parameters * weight_bytes + trainable * trained_bytes
    shards, gathered = 1, 0
    if params.distributed.strategy == "fsdp":  # everything split over the processes, but the layers in use
        shards, gathered = params.distributed.processes, _gathered_layers(model)
    return MemoryEstimate(
        parameters=parameters, trainable=trainable, weights=weights // shards + gathered,
        gradients=trainable * trained_bytes // shards, optimizer=2 * trainable * trained_bytes // shards,
        activations=_activation_bytes(config, params),
    )
