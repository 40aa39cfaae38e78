"""Write safetensors shards as the tensors are computed, chunk by chunk, so memory never holds a whole model.

The shard plan (names, dtypes, shapes) is known before any value is: each shard's header is written first,
then the tensors' bytes in header order. The files follow the safetensors format (8-byte little-endian header
length, JSON header padded to 8 bytes, raw data) and Hugging Face's shard names and index json.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import BinaryIO

import torch
from huggingface_hub import split_torch_state_dict_into_shards

SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int64: "I64", torch.int32: "I32",
    torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}
INDEX_NAME = "model.safetensors.index.json"


def _header(layout: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    entries: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, meta in layout.items():
        size = meta.numel() * meta.element_size()
        entries[name] = {"dtype": SAFETENSORS_DTYPES[meta.dtype], "shape": list(meta.shape),
                         "data_offsets": [offset, offset + size]}
        offset += size
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header


class ShardedSafetensorsWriter:
    """Streams tensors, in `order()`, into the shards of `out_dir`; `close()` fsyncs and writes the index."""

    def __init__(self, out_dir: Path, layout: dict[str, torch.Tensor], max_shard_size: str,
                 metadata: dict[str, str] | None = None) -> None:
        """`layout` maps each tensor name to a meta tensor of its output dtype and shape."""
        unsupported = {name: str(m.dtype) for name, m in layout.items() if m.dtype not in SAFETENSORS_DTYPES}
        if unsupported:
            raise ValueError(f"dtypes safetensors cannot store: {unsupported}")
        self.out_dir = out_dir
        self.layout = layout
        self.metadata = {"format": "pt", **(metadata or {})}
        self.split = split_torch_state_dict_into_shards(layout, max_shard_size=max_shard_size)
        self._pending = [(file, name) for file, names in self.split.filename_to_tensors.items() for name in names]
        self._file: BinaryIO | None = None
        self._file_name = ""
        self._left = 0  # bytes still owed to the current tensor

    def order(self) -> list[str]:
        """The tensor names in the order they must be written."""
        return [name for _, name in self._pending]

    def write(self, name: str, chunk: torch.Tensor) -> None:
        """Append the next chunk of tensor `name` (contiguous, in the planned dtype)."""
        if self._left == 0:
            self._start(name)
        data = chunk.contiguous().view(torch.uint8).numpy()
        if chunk.dtype != self.layout[name].dtype or data.nbytes > self._left:
            raise ValueError(f"tensor {name!r}: chunk of {chunk.dtype}, {data.nbytes} bytes does not fit the plan "
                             f"({self.layout[name].dtype}, {self._left} bytes left)")
        self._file.write(data)  # type: ignore[union-attr]
        self._left -= data.nbytes

    def _start(self, name: str) -> None:
        if not self._pending or self._pending[0][1] != name:
            expected = self._pending[0][1] if self._pending else "nothing"
            raise ValueError(f"tensor {name!r} written out of order: expected {expected!r}")
        file_name, _ = self._pending.pop(0)
        if file_name != self._file_name:
            self._finish_file()
            self._file_name = file_name
            self._file = open(self.out_dir / file_name, "wb")
            names = self.split.filename_to_tensors[file_name]
            self._file.write(_header({n: self.layout[n] for n in names}, self.metadata))
        meta = self.layout[name]
        self._left = meta.numel() * meta.element_size()

    def _finish_file(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def close(self) -> list[str]:
        """Check that every planned byte was written, fsync, write the index when sharded; return the file names."""
        if self._left or self._pending:
            missing = self._pending[0][1] if self._pending else "the last tensor"
            raise ValueError(f"output incomplete: {missing!r} was not written in full")
        self._finish_file()
        if self.split.is_sharded:
            index = {"metadata": self.split.metadata, "weight_map": self.split.tensor_to_filename}
            (self.out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return list(self.split.filename_to_tensors)

    def abort(self) -> None:
        """Close the open file without checks (the caller discards the directory)."""
        if self._file is not None:
            self._file.close()
            self._file = None
