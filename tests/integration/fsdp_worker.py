"""Run by test_fsdp_weights under torchrun: shard a tiny Llama with FSDP2 as accelerate does, train a step, save.

Writes <out>/reference (the same step without sharding) and <out>/sharded (gathered by `full_state_dict`), both
through `save_model` in bf16.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import LlamaConfig, LlamaForCausalLM

from pipelines.training.distributed import full_state_dict, is_main_process, save_model


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, tie_word_embeddings=False))


def _train_step(model: torch.nn.Module) -> None:
    ids = torch.arange(32).reshape(2, 16)  # the same batch on every process: the averaged gradient is its own
    model(input_ids=ids, labels=ids).loss.backward()
    with torch.no_grad():
        for weight in model.parameters():
            weight -= 0.1 * weight.grad


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    reference, sharded = _model(), _model()
    _train_step(reference)
    assert full_state_dict(reference) is None  # not sharded: saved as it is
    for layer in sharded.model.layers:  # one FSDP unit per decoder layer, then the root
        fully_shard(layer)
    fully_shard(sharded)
    _train_step(sharded)
    weights = full_state_dict(sharded)
    if is_main_process():  # float32 masters saved as a bf16 checkpoint, as the cp stage saves a bf16 base's
        save_model(reference, out / "reference", torch.bfloat16)
        save_model(sharded, out / "sharded", torch.bfloat16, weights)
    else:
        assert weights == {}, "only the main process receives the gathered weights"
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
