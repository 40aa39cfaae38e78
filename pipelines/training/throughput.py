"""Training throughput: tokens/s over the time spent training, and model FLOPs utilisation (MFU).

MFU follows the PaLM paper's definition (appendix B): the FLOPs the model needs per token, 6 per matmul weight
(forward 2, backward 4) plus 12 x layers x heads x head_dim x sequence for attention, times tokens/s, over the
accelerators' peak. Recomputation under gradient checkpointing does not count (that would be hardware FLOPs).
Frozen weights (LoRA) take 4 instead of 6: no weight gradient.
"""
from __future__ import annotations

import time

import torch
from transformers import PreTrainedModel, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, matched against the CUDA device name in
# this order (the first name found in it wins).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("GH200", 989.4), ("H200", 989.4),
    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
)


def peak_flops(device_name: str, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one accelerator: `override_tflops` when given, else looked up by name; None when unknown."""
    if override_tflops is not None:
        return override_tflops * 1e12
    return next((tflops * 1e12 for name, tflops in PEAK_BF16_TFLOPS if name in device_name), None)


def _matmul_weights(model: PreTrainedModel) -> tuple[int, int]:
    """(all, trainable) parameters of the model's matmuls: every weight but the input embedding's lookup table."""
    output = {id(p) for p in model.get_output_embeddings().parameters()}
    lookup = {id(p) for p in model.get_input_embeddings().parameters()} - output  # tied: it is a matmul too
    weights = [p for p in model.parameters() if id(p) not in lookup]
    return sum(p.numel() for p in weights), sum(p.numel() for p in weights if p.requires_grad)


def training_flops_per_token(model: PreTrainedModel, sequence_length: int) -> float:
    """Model FLOPs of one training token (forward and backward) at `sequence_length` tokens a sequence."""
    config = model.config.get_text_config()
    all_weights, trainable = _matmul_weights(model)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * head_dim * sequence_length
    return 4 * all_weights + 2 * trainable + attention


class ThroughputMeter(TrainerCallback):
    """Tokens/s and MFU over the time spent training: evaluation and checkpoint saving are left out.

    `reading` gives the figures since the previous reading (the live curve), `total` those of the whole run (call
    it once training ends).
    `peak_flops` is that of all processes together; None: no MFU.
    """

    def __init__(self, flops_per_token: float, peak_flops: float | None) -> None:
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self._start = self._last = time.perf_counter()
        self._paused = self._seconds = 0.0
        self._tokens_at_start = self._tokens_at_lap = 0

    @staticmethod
    def _now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # kernels run ahead of Python: count them where they finish
        return time.perf_counter()

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: object) -> None:
        self._start = self._last = self._now()
        self._paused = self._seconds = 0.0
        self._tokens_at_start = self._tokens_at_lap = state.num_input_tokens_seen  # after a resume: its count

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: object) -> None:
        if control.should_evaluate or control.should_save:  # a pause follows: mark where training stopped
            self._last = self._now()

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: object) -> None:
        self._pause_ends()

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: object) -> None:
        self._pause_ends()

    def _pause_ends(self) -> None:
        now = self._now()
        self._paused += now - self._last
        self._last = now

    def _figures(self, tokens: int, seconds: float) -> dict[str, float]:
        tokens_per_second = tokens / max(seconds, 1e-9)
        figures = {"tokens_per_second": tokens_per_second}
        if self.peak_flops:
            figures["mfu"] = tokens_per_second * self.flops_per_token / self.peak_flops
        return figures

    def reading(self, tokens_seen: int) -> dict[str, float]:
        """tokens_per_second (and mfu) since the previous reading; `tokens_seen` counts from the run's start."""
        now = self._now()
        seconds = now - self._start - self._paused
        self._seconds += seconds
        self._start = self._last = now
        self._paused = 0.0
        figures = self._figures(tokens_seen - self._tokens_at_lap, seconds)
        self._tokens_at_lap = tokens_seen
        return figures

    def total(self, tokens_seen: int) -> dict[str, float]:
        """tokens_per_second (and mfu) over this session's training (a resumed run: since it resumed)."""
        self.reading(tokens_seen)
        return self._figures(tokens_seen - self._tokens_at_start, self._seconds)
