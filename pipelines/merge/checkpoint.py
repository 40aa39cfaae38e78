"""Read the tensors of a checkpoint one at a time, memory-mapped, whether sharded or not.

safetensors is the format; pickle (`.bin`) checkpoints are read only when the caller opts in, because
unpickling a file from elsewhere can run code (`weights_only=True` narrows that, it does not remove it).
"""
from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
PICKLE = ("pytorch_model.bin", "pytorch_model.bin.index.json")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or inconsistent; the message names the file or tensor."""


def require_folder(path: Path) -> None:
    """Raise FileNotFoundError naming `path` unless it is a folder (a link loop is named as one)."""
    if path.is_dir():
        return
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:
            raise FileNotFoundError(f"{path}: a symlink loop") from None
        except OSError:
            raise FileNotFoundError(f"{path}: a broken symlink") from None
    raise FileNotFoundError(f"{path}: {'not a folder' if path.exists() else 'no such folder'}")


def _weight_map(model_dir: Path, single: str, index: str) -> dict[str, Path] | None:
    """Tensor name -> file, from the index json when there is one; None when neither file exists."""
    if (model_dir / index).exists():
        try:
            weight_map = json.loads((model_dir / index).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{model_dir / index}: not a weight index ({error})") from None
        return {name: model_dir / file for name, file in weight_map.items()}
    if (model_dir / single).exists():
        return {}
    return None


class SafetensorsCheckpoint:
    """Lazy, memory-mapped access to the tensors of one checkpoint directory; use as a context manager."""

    def __init__(self, model_dir: Path, allow_pickle: bool = False) -> None:
        self.model_dir = model_dir
        self._stack = ExitStack()
        self._files: dict[Path, Any] = {}
        self._last: tuple[str, torch.Tensor] | None = None
        self.pickle = False
        weight_map = _weight_map(model_dir, *SAFETENSORS)
        if weight_map is None:
            weight_map = _weight_map(model_dir, *PICKLE)
            if weight_map is None:
                raise CheckpointError(f"{model_dir}: no {' or '.join(SAFETENSORS + PICKLE)}")
            if not allow_pickle:
                raise CheckpointError(
                    f"{model_dir}: only pickle (.bin) weights, which can run code when loaded; convert them to "
                    "safetensors, or opt in with allow_pickle: true (--allow-pickle) if you trust the files"
                )
            self.pickle = True
        if not weight_map:  # a single file: its own keys are the map
            single = model_dir / (PICKLE[0] if self.pickle else SAFETENSORS[0])
            weight_map = {name: single for name in self._open(single).keys()}
        self.weight_map = weight_map

    def _open(self, file: Path) -> Any:
        if file not in self._files:
            try:
                if self.pickle:
                    self._files[file] = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
                else:
                    self._files[file] = self._stack.enter_context(safe_open(file, "pt"))
            except (SafetensorError, FileNotFoundError, RuntimeError, OSError) as error:
                raise CheckpointError(f"{file}: unreadable {'pickle' if self.pickle else 'safetensors'} file: "
                                      f"{error}") from None
        return self._files[file]

    def __enter__(self) -> "SafetensorsCheckpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self._last = None
        self._stack.close()
        self._files.clear()

    def names(self) -> list[str]:
        """Tensor names, in the checkpoint's order."""
        return list(self.weight_map)

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape, read from the file's header (the tensor itself is not read)."""
        if name not in self.weight_map:
            raise CheckpointError(f"{self.model_dir}: has no tensor {name!r}")
        if self.pickle:
            return tuple(self.get(name).shape)
        return tuple(self._open(self.weight_map[name]).get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        """One tensor, backed by the memory-mapped file (no copy); a missing name raises CheckpointError naming it."""
        if self._last is not None and self._last[0] == name:  # the merge asks for one tensor once per block
            return self._last[1]
        if name not in self.weight_map:
            raise CheckpointError(f"{self.model_dir}: has no tensor {name!r}")
        handle = self._open(self.weight_map[name])
        try:
            tensor = handle[name] if self.pickle else handle.get_tensor(name)
        except (SafetensorError, KeyError) as error:
            raise CheckpointError(f"{self.weight_map[name]}: cannot read tensor {name!r}: {error}") from None
        self._last = (name, tensor)
        return tensor
