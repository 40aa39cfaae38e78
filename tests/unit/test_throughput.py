"""Throughput figures: FLOPs a training token costs, accelerator peaks, and tokens/s over training time only."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks import mfu as mfu_benchmark
from pipelines.training import throughput
from pipelines.training.throughput import ThroughputMeter, peak_flops, training_flops_per_token

SEQUENCE = 32


def _llama(tied: bool) -> LlamaForCausalLM:
    # eager attention: its matmuls are plain bmm, which the FLOP counter sees (it has no formula for CPU SDPA)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied,
                         attn_implementation="eager")
    return LlamaForCausalLM(config)


def _counted_flops_per_token(model: LlamaForCausalLM) -> float:
    ids = torch.randint(0, model.config.vocab_size, (2, SEQUENCE))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    return counter.get_total_flops() / ids.numel()


@pytest.mark.parametrize("tied", [False, True])
def test_flops_per_token_match_counted_matmuls(tied: bool) -> None:
    model = _llama(tied)
    assert training_flops_per_token(model, SEQUENCE) == pytest.approx(_counted_flops_per_token(model), rel=0.01)


def test_frozen_weights_cost_no_weight_gradient() -> None:
    model = _llama(tied=False)
    for name, weight in model.named_parameters():
        weight.requires_grad_("mlp" not in name)  # frozen in the middle: their inputs still need gradients
    full = training_flops_per_token(_llama(tied=False), SEQUENCE)
    frozen = training_flops_per_token(model, SEQUENCE)
    assert frozen < full
    assert frozen == pytest.approx(_counted_flops_per_token(model), rel=0.01)


def test_peaks_are_looked_up_by_device_name() -> None:
    assert peak_flops("NVIDIA H100 80GB HBM3") == pytest.approx(989.4e12)
    assert peak_flops("NVIDIA H100 PCIe") == pytest.approx(756e12)  # the PCIe card is slower than the SXM one
    assert peak_flops("NVIDIA A100-SXM4-80GB") == pytest.approx(312e12)
    assert peak_flops("NVIDIA L40") == pytest.approx(181e12)  # not the L4's figure, which its name contains
    assert peak_flops("cpu") is None
    assert peak_flops("cpu", override_tflops=2.5) == pytest.approx(2.5e12)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_meter_leaves_evaluation_and_saving_out(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(throughput.time, "perf_counter", clock)
    meter = ThroughputMeter(flops_per_token=1e6, peak_flops=1e9)
    state, idle = SimpleNamespace(num_input_tokens_seen=100), SimpleNamespace(should_evaluate=False, should_save=False)
    meter.on_train_begin(None, state, idle)  # a resumed run: 100 tokens were seen before
    clock.now = 10.0
    meter.on_step_end(None, state, SimpleNamespace(should_evaluate=True, should_save=False))
    clock.now = 40.0
    meter.on_evaluate(None, state, idle)  # 30 s of evaluation
    clock.now = 45.0
    meter.on_step_end(None, state, SimpleNamespace(should_evaluate=False, should_save=True))
    clock.now = 50.0
    meter.on_save(None, state, idle)  # 5 s of saving
    clock.now = 55.0
    assert meter.reading(1100) == pytest.approx({"tokens_per_second": 50.0, "mfu": 0.05})  # 1000 tokens in 20 s
    clock.now = 65.0
    assert meter.reading(1600) == pytest.approx({"tokens_per_second": 50.0, "mfu": 0.05})
    clock.now = 75.0
    assert meter.total(2600) == pytest.approx({"tokens_per_second": 2500 / 40, "mfu": 2500 / 40 * 1e6 / 1e9})
    assert "mfu" not in ThroughputMeter(flops_per_token=1e6, peak_flops=None).reading(10)


def test_mfu_benchmark_runs_the_cp_training_path(capsys: pytest.CaptureFixture[str]) -> None:
    mfu_benchmark.main(["--preset", "tiny", "--peak-tflops", "0.01", "--steps", "2", "--warmup-steps", "1",
                        "--batch-size", "2", "--block-size", "64"])
    measured = re.search(r"measured: steps 2-3, ([\d,]+) tokens/s, .* MFU ([\d.]+)%", capsys.readouterr().out)
    assert measured and float(measured[1].replace(",", "")) > 0 and float(measured[2]) > 0
