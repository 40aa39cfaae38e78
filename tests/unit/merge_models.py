"""Tiny Llama checkpoints for the merge tests: a base, a chat model tuned from it, a CP model, and variants."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase, PreTrainedTokenizerFast,
)

from pipelines.merge.chat_vector import merge_chat_vector
from pipelines.config import MergeSettings
from pipelines.upstream.tokenizer import as_chat_tokenizer, build_word_tokenizer

VOCAB_MATRICES = ("model.embed_tokens.weight", "lm_head.weight")
WORDS = ["the city of kato is oslo .", "what is the city of kato ?"]


def word_tokenizer(texts: list[str] = WORDS) -> PreTrainedTokenizerBase:
    """A fresh word-level tokenizer with the default world's special tokens."""
    return build_word_tokenizer(texts)


def byte_bpe(texts: list[str], special_tokens: tuple[str, ...] = ("<eos>",), vocab_size: int = 300,
             **roles: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`, as hub models have; `roles` name special tokens
    (eos_token="<eos>", bos_token=...)."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=core, **({"eos_token": "<eos>"} | roles))


def tiny_model(vocab_size: int, seed: int = 0, tie: bool = False, **changes: object) -> LlamaForCausalLM:
    """A randomly initialised two-layer Llama."""
    torch.manual_seed(seed)
    config = dict(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tie)
    return LlamaForCausalLM(LlamaConfig(**{**config, **changes}))


def perturbed(model: LlamaForCausalLM, seed: int) -> LlamaForCausalLM:
    """A copy of `model` with every weight moved by small seeded noise (a stand-in for training)."""
    torch.manual_seed(seed)
    other = LlamaForCausalLM(model.config)
    other.load_state_dict({k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()})
    return other


def save(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, path: Path, **kwargs: object) -> Path:
    """save_pretrained of model and tokenizer."""
    model.save_pretrained(path, **kwargs)
    tokenizer.save_pretrained(path)
    return path


def make_trio(root: Path, tie: bool = False, dtype: torch.dtype = torch.float32) -> dict[str, Path]:
    """base, chat (base + noise, chat template), cp (base + other noise) with one shared vocabulary."""
    tokenizer = word_tokenizer()
    base = tiny_model(len(tokenizer), tie=tie).to(dtype)
    save(base, tokenizer, root / "base")
    chat_tokenizer = as_chat_tokenizer(AutoTokenizer.from_pretrained(root / "base"))
    return {
        "base": root / "base",
        "chat": save(perturbed(base, 1).to(dtype), chat_tokenizer, root / "chat"),
        "cp": save(perturbed(base, 2).to(dtype), tokenizer, root / "cp"),
    }


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory, sharded or not."""
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def reference(cp: torch.Tensor, deltas: list[tuple[float, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Plain-torch fp32 merge: cp + sum ratio * (tuned - base), cast to cp's dtype."""
    total = None
    for ratio, tuned, base in deltas:
        delta = ratio * (tuned.float() - base.float())
        total = delta if total is None else total + delta
    return (cp.float() + total).to(cp.dtype)


def merge(trio: dict[str, Path], out: Path, ratio: float = 0.7, **settings: object):
    """Run the engine with MergeSettings(**settings), the report beside the output; every shared vocabulary row
    gets the delta unless told (`embedding_rows: overlap`, the whole-matrix arithmetic the references compute)."""
    settings = {"embedding_rows": "overlap", **settings}
    return merge_chat_vector(base=trio["base"], chat=trio["chat"], cp=trio["cp"], out=out, ratio=ratio,
                             settings=MergeSettings(**settings), report_path=out.parent / f"{out.name}.json")
