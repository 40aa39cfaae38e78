"""The streaming safetensors writer: chunks in, standard (sharded) safetensors out; misuse is caught."""
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from pipelines.merge.writer import ShardedSafetensorsWriter


def _layout(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: torch.empty(t.shape, dtype=t.dtype, device="meta") for name, t in tensors.items()}


def _write(out: Path, tensors: dict[str, torch.Tensor], max_shard_size: int | str, chunk: int = 7) -> list[str]:
    writer = ShardedSafetensorsWriter(out, _layout(tensors), max_shard_size)
    for name in writer.order():
        flat = tensors[name].reshape(-1)
        for start in range(0, max(flat.numel(), 1), chunk):
            writer.write(name, flat[start:start + chunk])
    return writer.close()


def test_chunks_make_the_same_tensors_in_shards(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tensors = {"a.weight": torch.randn(10, 6).bfloat16(), "b.bias": torch.randn(33), "c.steps": torch.arange(5),
               "d.empty": torch.zeros(0, 4, dtype=torch.float16)}
    files = _write(tmp_path, tensors, max_shard_size=200)
    assert len(files) > 1
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors) and set(index["weight_map"].values()) == set(files)
    for name, expected in tensors.items():
        with safe_open(tmp_path / index["weight_map"][name], "pt") as handle:
            assert torch.equal(handle.get_tensor(name), expected), name
            assert handle.metadata() == {"format": "pt"}


def test_one_shard_has_no_index(tmp_path: Path) -> None:
    assert _write(tmp_path, {"w": torch.ones(3, 3)}, max_shard_size="5GB") == ["model.safetensors"]
    assert not (tmp_path / "model.safetensors.index.json").exists()


def test_out_of_order_and_incomplete_writes_are_refused(tmp_path: Path) -> None:
    tensors = {"a": torch.ones(4), "b": torch.ones(4)}
    writer = ShardedSafetensorsWriter(tmp_path, _layout(tensors), "5GB")
    writer.write(writer.order()[1], torch.ones(4))
    with pytest.raises(ValueError, match=r"written out of order: expected 'a'"):
        writer.close()
    writer = ShardedSafetensorsWriter(tmp_path, _layout(tensors), "5GB")
    writer.write("a", torch.ones(4))
    with pytest.raises(ValueError, match=r"'b' was not written in full"):
        writer.close()
