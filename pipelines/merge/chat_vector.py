"""merged = CP + ratio * (chat - base), tensor by tensor, with a row policy for the vocabulary matrices."""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from tqdm import tqdm
from transformers import AutoConfig, AutoTokenizer

from pipelines.atomic import atomic_dir, write_json_atomic
from pipelines.merge.checkpoint import CheckpointError, SafetensorsCheckpoint

RowPolicy = Literal["overlap", "specials", "skip"]


@dataclass(frozen=True)
class TensorReport:
    """What the merge did to one tensor."""

    name: str
    action: str
    ratio: float
    delta_norm: float
    relative_change: float


def special_token_ids(tokenizer_dir: Path) -> list[int]:
    """Ids of the special tokens (chat-template and control tokens) of a tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return sorted(i for i, token in tokenizer.added_tokens_decoder.items() if token.special)


def _row_mask(policy: RowPolicy, rows: int, specials: list[int]) -> torch.Tensor | None:
    """Which rows of a vocabulary matrix take the delta; None means all of them."""
    if policy == "overlap":
        return None
    mask = torch.zeros(rows, 1, dtype=torch.bool)
    if policy == "specials":
        mask[specials] = True
    return mask


def _merge_tensor(name: str, cp: torch.Tensor, base: torch.Tensor, chat: torch.Tensor, ratio: float,
                  row_mask: torch.Tensor | None) -> tuple[torch.Tensor, TensorReport]:
    if not (cp.shape == base.shape == chat.shape):
        raise CheckpointError(
            f"tensor {name!r}: shapes differ: cp {tuple(cp.shape)}, base {tuple(base.shape)}, chat {tuple(chat.shape)}"
        )
    delta = ratio * (chat.float() - base.float())
    if row_mask is not None:
        delta = delta * row_mask
    merged = cp.float() + delta
    if not torch.isfinite(merged).all():
        raise CheckpointError(f"tensor {name!r}: the merge produced NaN or Inf")
    action = "add" if row_mask is None else f"rows:{int(row_mask.sum())}"
    norm = float(delta.norm())
    return merged.to(cp.dtype), TensorReport(name, action, ratio, norm, norm / max(float(cp.float().norm()), 1e-12))


def _check_architectures(base: Path, chat: Path, cp: Path) -> int:
    configs = {role: AutoConfig.from_pretrained(path) for role, path in (("base", base), ("chat", chat), ("cp", cp))}
    kinds = {role: (config.model_type, tuple(config.architectures or ())) for role, config in configs.items()}
    if len(set(kinds.values())) != 1:
        raise CheckpointError(f"architectures differ: {kinds}")
    return configs["cp"].vocab_size


def _write_tokenizer_and_configs(cp: Path, chat: Path, out: Path) -> None:
    """CP's tokenizer and config, with the chat model's chat template, EOS and generation config."""
    tokenizer = AutoTokenizer.from_pretrained(cp)
    chat_tokenizer = AutoTokenizer.from_pretrained(chat)
    tokenizer.chat_template = chat_tokenizer.chat_template
    tokenizer.eos_token = chat_tokenizer.eos_token
    tokenizer.save_pretrained(out)
    config = AutoConfig.from_pretrained(cp)
    config.eos_token_id = tokenizer.eos_token_id
    config.save_pretrained(out)
    if (chat / "generation_config.json").exists():
        shutil.copy(chat / "generation_config.json", out / "generation_config.json")


def merge_chat_vector(base: Path, chat: Path, cp: Path, out: Path, ratio: float, embedding_rows: RowPolicy,
                      report_path: Path) -> list[TensorReport]:
    """Write CP + ratio * (chat - base) to `out` (atomically) and a per-tensor report to `report_path`."""
    vocab_size = _check_architectures(base, chat, cp)
    specials = special_token_ids(chat)
    reports: list[TensorReport] = []
    merged: dict[str, torch.Tensor] = {}
    with SafetensorsCheckpoint(base) as base_ck, SafetensorsCheckpoint(chat) as chat_ck, \
            SafetensorsCheckpoint(cp) as cp_ck, atomic_dir(out) as staging:
        for name in tqdm(cp_ck.names(), desc=f"merge alpha={ratio}", unit="tensor"):
            cp_tensor = cp_ck.get(name)
            is_vocab = cp_tensor.ndim == 2 and cp_tensor.shape[0] == vocab_size
            mask = _row_mask(embedding_rows, vocab_size, specials) if is_vocab else None
            merged[name], report = _merge_tensor(name, cp_tensor, base_ck.get(name), chat_ck.get(name), ratio, mask)
            reports.append(report)
        save_file(merged, staging / "model.safetensors", metadata={"format": "pt"})
        _write_tokenizer_and_configs(cp, chat, staging)
    write_json_atomic(report_path, {
        "ratio": ratio, "embedding_rows": embedding_rows, "tensors": [asdict(r) for r in reports],
    })
    return reports
