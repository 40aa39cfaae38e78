"""Write safetensors shards as the tensors are computed, chunk by chunk, so memory never holds a whole model.

The shard plan (names, dtypes, shapes) is known before any value is: each shard's header is written first,
then the tensors' bytes in header order. The files follow the safetensors format (8-byte little-endian header
length, JSON header padded to 8 bytes, raw data) and Hugging Face's shard names and index json.
"""
from __future__ import annotations

import json
import os
import queue
import struct
import threading
from pathlib import Path
from typing import BinaryIO

import torch
from huggingface_hub import constants
from huggingface_hub.serialization import split_state_dict_into_shards_factory

SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int64: "I64", torch.int32: "I32",
    torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}
INDEX_NAME = "model.safetensors.index.json"
SYNC_EVERY = 256 << 20  # flush to disk as we go, so the final fsync has little left to wait for
PENDING_BLOCKS = 2  # blocks queued for the writing thread: bounds the memory they hold


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
    """Streams tensors, in `order()`, into the shards of `out_dir`; `close()` fsyncs and writes the index.

    A thread does the file writes and syncs (they release the GIL), so disk time overlaps the arithmetic.
    """

    def __init__(self, out_dir: Path, layout: dict[str, torch.Tensor], max_shard_size: int | str,
                 metadata: dict[str, str] | None = None) -> None:
        """`layout` maps each tensor name to a meta tensor of its output dtype and shape."""
        unsupported = {name: str(m.dtype) for name, m in layout.items() if m.dtype not in SAFETENSORS_DTYPES}
        if unsupported:
            raise ValueError(f"dtypes safetensors cannot store: {unsupported}")
        self.out_dir = out_dir
        self.layout = layout
        self.metadata = {"format": "pt", **(metadata or {})}
        # the generic splitter, given plain sizes: the torch one imports torch.distributed (most of a second)
        self.split = split_state_dict_into_shards_factory(
            layout, get_storage_size=lambda meta: meta.numel() * meta.element_size(),
            filename_pattern=constants.SAFETENSORS_WEIGHTS_FILE_PATTERN, max_shard_size=max_shard_size)
        self._pending = [(file, name) for file, names in self.split.filename_to_tensors.items() for name in names]
        self._order = [name for _, name in self._pending]
        self._file: BinaryIO | None = None
        self._file_name = ""
        self._left = 0  # bytes still owed to the current tensor
        self._unsynced = 0
        self._queue: queue.Queue = queue.Queue(maxsize=PENDING_BLOCKS)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="safetensors-writer", daemon=True)
        self._thread.start()

    def order(self) -> list[str]:
        """The tensor names in the order they must be written."""
        return list(self._order)

    def write(self, name: str, chunk: torch.Tensor) -> None:
        """Queue the next chunk of tensor `name` (in the planned dtype); raises what the writing thread hit."""
        self._raise_pending()
        self._queue.put((name, chunk))

    def _raise_pending(self) -> None:
        if self._error is not None:
            raise self._error

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write(*item)
                except BaseException as error:  # handed to the producer on its next call
                    self._error = error

    def _write(self, name: str, chunk: torch.Tensor) -> None:
        if self._left == 0:
            self._start(name)
        data = chunk.contiguous().view(torch.uint8).numpy()
        if chunk.dtype != self.layout[name].dtype or data.nbytes > self._left:
            raise ValueError(f"tensor {name!r}: chunk of {chunk.dtype}, {data.nbytes} bytes does not fit the plan "
                             f"({self.layout[name].dtype}, {self._left} bytes left)")
        file = self._open_file()
        file.write(data)
        self._left -= data.nbytes
        self._unsynced += data.nbytes
        if self._unsynced >= SYNC_EVERY:
            file.flush()
            os.fdatasync(file.fileno())
            self._unsynced = 0

    def _open_file(self) -> BinaryIO:
        if self._file is None:  # _start opens one before the first chunk of every tensor
            raise RuntimeError(f"{self.out_dir}: a chunk arrived before its shard was started")
        return self._file

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

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def close(self) -> list[str]:
        """Wait for the writes, check every planned byte arrived, fsync, write the index when sharded."""
        self._stop()
        self._raise_pending()
        if self._left or self._pending:
            missing = self._pending[0][1] if self._pending else "the last tensor"
            raise ValueError(f"output incomplete: {missing!r} was not written in full")
        self._finish_file()
        if self.split.is_sharded:
            index = {"metadata": self.split.metadata, "weight_map": self.split.tensor_to_filename}
            (self.out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return list(self.split.filename_to_tensors)

    def abort(self) -> None:
        """Stop the writing thread and close the open file without checks (the caller discards the directory)."""
        self._error = self._error or RuntimeError("aborted")
        self._stop()
        if self._file is not None:
            self._file.close()
            self._file = None
