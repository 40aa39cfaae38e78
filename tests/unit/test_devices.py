"""Where evaluation runs: the accelerator when there is one, named devices checked, float32 on the CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_check import on_cpu, stage_table

from pipelines.config import ParamsError, validate_params
from pipelines.devices import inference_dtype, load_for_inference, resolve_device
from pipelines.stage_log import STAGE_LOG
from tests.conftest import REPO
from tests.unit.merge_models import save, tiny_model, word_tokenizer


def test_auto_is_the_gpu_when_there_is_one() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_device_this_machine_lacks_is_refused_naming_the_key() -> None:
    missing = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ValueError, match=rf"eval.device is '{missing}' but this machine has"):
        resolve_device(missing)


def test_a_device_that_is_not_one_is_a_params_error() -> None:
    with pytest.raises(ParamsError, match="eval.device"):
        validate_params({"eval": {"device": "gpu"}})


def test_a_bf16_checkpoint_is_evaluated_in_float32_on_the_cpu(tmp_path: Path) -> None:
    tokenizer = word_tokenizer()
    folder = save(tiny_model(len(tokenizer)).to(torch.bfloat16), tokenizer, tmp_path / "bf16")
    model = load_for_inference(folder, torch.device("cpu"))
    assert inference_dtype(torch.device("cpu")) == torch.float32
    assert next(model.parameters()).dtype == torch.float32 and not model.training


def test_each_stage_process_logs_its_device_and_time_for_the_gpu_check(tmp_path: Path) -> None:
    log = tmp_path / "stages.jsonl"
    env = {**os.environ, STAGE_LOG: str(log), "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "pipelines", "inbox"], cwd=tmp_path, env=env, check=True)
    subprocess.run([sys.executable, "-c", "import torch; torch.zeros(1)"], env=env, check=True)  # not a stage
    (row,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert row["stage"] == "inbox" and row["device"] == "cpu" and row["cuda_peak_gib"] is None
    assert row["seconds"] > 0
    evaluated_on_cpu = {**row, "stage": "evaluate cp"}
    assert on_cpu([row, evaluated_on_cpu, {**evaluated_on_cpu, "stage": "cp", "device": "cuda"}]) == ["evaluate cp"]
    assert "| evaluate cp | cpu |" in stage_table([evaluated_on_cpu])
