"""FSDP-sharded weights reach the saved model: two gloo processes shard a tiny Llama with FSDP2, train a step,
gather with `full_state_dict` and save; the result must equal the same step without sharding.

The Trainer runs FSDP only on GPUs (accelerate's rule), so this checks the part chatgraft adds: gathering and
saving, where a model saved from one rank's shards would hold a fraction of each weight.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.integration


def test_sharded_weights_are_gathered_into_the_saved_model(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "-m", "tests.integration.fsdp_worker", str(tmp_path)], check=True, timeout=300)
    reference = load_file(tmp_path / "reference" / "model.safetensors")
    sharded = load_file(tmp_path / "sharded" / "model.safetensors")
    config = json.loads((tmp_path / "sharded" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]  # not FSDP's wrapper class
    assert config["dtype"] == "bfloat16"  # the saved dtype, not the float32 the sharded model trained in
    assert sharded.keys() == reference.keys()
    for name, weight in reference.items():
        assert sharded[name].dtype == torch.bfloat16
        torch.testing.assert_close(sharded[name], weight, msg=lambda m: f"{name}: {m}")
