"""Synthetic bf16 Llama checkpoints (base, chat, cp) of a chosen size, written without building a model in memory."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from pipelines.upstream.tokenizer import SPECIAL_TOKENS, as_chat_tokenizer


def llama_config(layers: int, hidden: int = 2048, intermediate: int = 4096, heads: int = 16,
                 vocab: int = 32000, kv_heads: int | None = None) -> LlamaConfig:
    """The benchmarks' architecture: untied, bf16, 4,096 positions; `kv_heads` < `heads` for grouped-query
    attention."""
    return LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads or heads, vocab_size=vocab,
                       max_position_embeddings=4096, tie_word_embeddings=False, dtype="bfloat16",
                       architectures=["LlamaForCausalLM"])


def word_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer of `vocab` entries: the special tokens, then the words w0, w1, ..."""
    words = SPECIAL_TOKENS + [f"w{i}" for i in range(vocab - len(SPECIAL_TOKENS))]
    core = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def write_trio(root: Path, config: LlamaConfig, seed: int = 0) -> dict[str, Path]:
    """base = N(0, 0.02); chat and cp = base + small independent noise; each with tokenizer and config."""
    with torch.device("meta"):
        shapes = {n: t.shape for n, t in AutoModelForCausalLM.from_config(config).state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, dict[str, torch.Tensor]] = {"base": {}, "chat": {}, "cp": {}}
    for name, shape in shapes.items():
        base = torch.randn(shape, generator=generator).mul_(0.02)
        tensors["base"][name] = base.bfloat16()
        for role in ("chat", "cp"):
            tensors[role][name] = base.add(torch.randn(shape, generator=generator), alpha=0.002).bfloat16()
    tokenizer = word_tokenizer(config.vocab_size)
    paths = {}
    for role, state in tensors.items():
        path = root / role
        path.mkdir(parents=True, exist_ok=True)
        save_file(state, path / "model.safetensors", metadata={"format": "pt"})
        config.save_pretrained(path)
        (as_chat_tokenizer(word_tokenizer(config.vocab_size)) if role == "chat" else tokenizer).save_pretrained(path)
        paths[role] = path
    return paths


def size_bytes(model_dir: Path) -> int:
    """Bytes of the safetensors files of a model directory."""
    return sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
