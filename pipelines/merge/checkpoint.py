"""Read the tensors of a safetensors checkpoint one at a time, memory-mapped, whether sharded or not."""
from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or inconsistent; the message names the file or tensor."""


class SafetensorsCheckpoint:
    """Lazy access to the tensors of one checkpoint directory; use as a context manager."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self.weight_map = self._weight_map(model_dir)
        self._stack = ExitStack()
        self._handles: dict[Path, object] = {}

    @staticmethod
    def _weight_map(model_dir: Path) -> dict[str, Path]:
        if (model_dir / INDEX).exists():
            index = json.loads((model_dir / INDEX).read_text())
            return {name: model_dir / file for name, file in index["weight_map"].items()}
        single = model_dir / SINGLE
        if not single.exists():
            if list(model_dir.glob("*.bin")):
                raise CheckpointError(f"{model_dir}: only pickle (.bin) weights; convert them to safetensors")
            raise CheckpointError(f"{model_dir}: no {SINGLE} or {INDEX}")
        try:
            with safe_open(single, "pt") as handle:
                return {name: single for name in handle.keys()}
        except SafetensorError as error:
            raise CheckpointError(f"{single}: unreadable safetensors file: {error}") from None

    def __enter__(self) -> "SafetensorsCheckpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def names(self) -> list[str]:
        return list(self.weight_map)

    def get(self, name: str) -> torch.Tensor:
        """Load one tensor; a missing name raises CheckpointError naming it."""
        if name not in self.weight_map:
            raise CheckpointError(f"{self.model_dir}: has no tensor {name!r}")
        file = self.weight_map[name]
        if file not in self._handles:
            try:
                self._handles[file] = self._stack.enter_context(safe_open(file, "pt"))
            except (SafetensorError, FileNotFoundError) as error:
                raise CheckpointError(f"{file}: unreadable safetensors file: {error}") from None
        return self._handles[file].get_tensor(name)  # type: ignore[attr-defined]
