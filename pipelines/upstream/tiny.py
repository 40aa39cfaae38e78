"""Builds the tiny Llama-architecture model of the default world from scratch."""
from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from pipelines.config import TinyModelParams


def build_tiny_llama(shape: TinyModelParams, tokenizer: PreTrainedTokenizerBase, context: int) -> LlamaForCausalLM:
    """A randomly initialised, untied Llama sized by `shape`, with the tokenizer's vocabulary."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_heads,
        max_position_embeddings=context,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config)
