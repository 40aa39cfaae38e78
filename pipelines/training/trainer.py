"""One training run with the Hugging Face Trainer, its loss curve written as a CSV that dvc.yaml declares a plot."""
from __future__ import annotations

import csv
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from datasets import Dataset, IterableDataset
from transformers import PreTrainedModel, TrainingArguments, set_seed

from pipelines.config import TrainParams
from pipelines.training.checkpoints import MarkComplete, last_complete_checkpoint
from pipelines.training.distributed import is_main_process, world_size
from pipelines.training.precision import bf16_autocast
from pipelines.training.throughput import ThroughputMeter, peak_flops, training_flops_per_token
from pipelines.training.weighted import WeightedLossTrainer


def trainer_step(checkpoint: Path | None) -> int:
    """The step a checkpoint folder was saved at (0 for none)."""
    return int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else 0


@dataclass(frozen=True)
class TrainResult:
    """Final figures of a run."""

    train_loss: float
    eval_loss: float | None
    tokens_per_second: float  # over the time spent training (evaluation and checkpoint saving left out)
    steps: int
    mfu: float | None = None  # model FLOPs utilisation, where the accelerator's peak is known
    history: tuple[dict[str, float], ...] = ()  # the training logs: step, loss, tokens_per_second, mfu, ...
    resumed_from: int = 0  # the step of the checkpoint the run continued from (0: a fresh start)


def _live_tracking() -> list[str] | str:
    """Report live curves to MLflow only when the environment names a run (the flow does)."""
    return ["mlflow"] if os.environ.get("MLFLOW_RUN_ID") else "none"


def _final_eval_loss(log_history: list[dict[str, Any]]) -> float:
    """The held-out loss of the evaluation the Trainer runs at the last step: read, never evaluated again after
    training, as transformers' MLflowCallback ends the run named by MLFLOW_RUN_ID when training ends (and MLflow
    drops the variable once used), so a later evaluation's log would start another run in the Default experiment."""
    return next(entry["eval_loss"] for entry in reversed(log_history) if "eval_loss" in entry)


def _write_curve(log_history: list[dict[str, Any]], path: Path) -> None:
    rows: dict[int, dict[str, Any]] = {}
    for entry in log_history:
        for key in ("loss", "eval_loss", "learning_rate"):
            if key in entry:
                rows.setdefault(entry["step"], {"step": entry["step"]})[key] = entry[key]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["step", "loss", "eval_loss", "learning_rate"])
        writer.writeheader()
        writer.writerows(rows[step] for step in sorted(rows))


class _Trainer(WeightedLossTrainer):
    """Adds tokens/s and MFU since the previous log to each training log, and perplexity to each evaluation, so
    that MLflow plots them live."""

    def __init__(self, meter: ThroughputMeter, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.meter = meter
        self.add_callback(meter)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log (evaluation logs carry eval_loss)
            logs |= self.meter.reading(self.state.num_input_tokens_seen)
        if "eval_loss" in logs:
            logs["eval_perplexity"] = math.exp(logs["eval_loss"])
        super().log(logs, start_time)


def _throughput_meter(model: PreTrainedModel, params: TrainParams) -> ThroughputMeter:
    """The meter of this run: MFU only where the peak is known and the run is in bf16 (the peak's precision)."""
    peak = peak_flops(torch.cuda.get_device_name() if bf16_autocast() else "cpu", params.peak_tflops)
    return ThroughputMeter(training_flops_per_token(model, params.block_size),
                           peak * world_size() if peak else None)


def _fsdp_arguments(params: TrainParams) -> dict[str, Any]:
    """TrainingArguments of an FSDP2 run: every weight sharded, one unit per decoder layer (the model's
    `_no_split_modules`), activation checkpointing done by FSDP, checkpoints saved as shards."""
    if not torch.cuda.is_available():
        raise ValueError("cp.distributed.strategy fsdp needs CUDA GPUs (accelerate runs FSDP on accelerators "
                         "only); use ddp on CPU")
    return {"fsdp": "full_shard auto_wrap", "gradient_checkpointing": False, "fsdp_config": {
        "version": 2, "activation_checkpointing": params.gradient_checkpointing,
        "state_dict_type": "SHARDED_STATE_DICT"}}


@dataclass(frozen=True)
class Checkpointing:
    """Where and how often a resumable run saves, and what identifies the run."""

    directory: Path
    every: int
    fingerprint: str


def train_causal_lm(
    model: PreTrainedModel,
    train_examples: Dataset | IterableDataset | list[dict[str, Any]],
    params: TrainParams,
    collator: Callable,
    curve_csv: Path,
    eval_examples: Dataset | list[dict[str, Any]] | None = None,
    live_tracking: bool = False,
    checkpointing: Checkpointing | None = None,
    fsdp: bool = False,
) -> TrainResult:
    """Train `model` in place for `params.steps` steps (AdamW, cosine decay after warmup) and write its loss curve.

    With `checkpointing`, the run saves every `every` steps and continues from its last complete checkpoint.
    With `fsdp`, the model is sharded over the processes and stays so: `full_state_dict` gathers it.
    """
    set_seed(params.seed)
    log_every = max(1, params.steps // 50)
    with tempfile.TemporaryDirectory(prefix="chatgraft-train-") as scratch:
        work_dir = checkpointing.directory if checkpointing else Path(scratch)
        resume = last_complete_checkpoint(work_dir, checkpointing.fingerprint, cleanup=is_main_process()) \
            if checkpointing else None
        saving = checkpointing is not None and checkpointing.every > 0
        save_every, fingerprint = (checkpointing.every, checkpointing.fingerprint) if checkpointing else (0, "")
        args = TrainingArguments(
            output_dir=str(work_dir),
            max_steps=params.steps,
            # batch_size is the global batch; with several processes the loader draws it as one process would and
            # gives each process its slice (split_batches), so the run sees the same batches as a single process
            per_device_train_batch_size=params.batch_size,
            # held-out loss is a mean of per-block losses: several processes evaluate one block each per step; of an
            # uneven last step (the block accelerate repeats dropped), transformers' loop keeps the last block once
            # where it counts every other world_size times, so an odd set's loss moves by ~1e-4 of its value
            per_device_eval_batch_size=params.batch_size if world_size() == 1 else world_size(),
            accelerator_config={"split_batches": world_size() > 1},
            learning_rate=params.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=int(params.warmup_ratio * params.steps),
            weight_decay=params.weight_decay,
            logging_steps=log_every,
            eval_strategy="steps" if eval_examples else "no",
            eval_steps=params.eval_every or max(1, params.steps // 10),
            save_strategy="steps" if saving else "no",
            save_steps=save_every if saving else 500,
            save_total_limit=2,
            report_to=_live_tracking() if live_tracking else "none",
            seed=params.seed,
            data_seed=params.seed,
            bf16=bf16_autocast(),
            # real tokens only, where padding is marked (packed blocks have none)
            include_num_input_tokens_seen="non_padding" if "attention_mask" in next(iter(train_examples)) else "all",
            dataloader_num_workers=0,
            remove_unused_columns=False,  # examples carry only what the collator needs (a loss weight, say)
            dataloader_pin_memory=torch.cuda.is_available(),
            # without use_cpu, accelerate sees no distributed run on CPU: every torchrun process would train alone
            use_cpu=not torch.cuda.is_available(),
            ddp_backend="gloo" if world_size() > 1 and not torch.cuda.is_available() else None,
            ddp_find_unused_parameters=False,  # every trainable weight takes part in each step: skip the extra pass
            # each process averages over its own tokens and DDP averages the gradients: with equal blocks per
            # process that is the one-process mean, and the logged losses stay per-token
            average_tokens_across_devices=False,
            **(_fsdp_arguments(params) if fsdp else {"gradient_checkpointing": params.gradient_checkpointing}),
        )
        trainer = _Trainer(  # the plain Trainer unless the examples carry loss weights
            meter=_throughput_meter(model, params), model=model, args=args, train_dataset=train_examples,
            eval_dataset=eval_examples, data_collator=collator,
            callbacks=[MarkComplete(fingerprint)] if saving else None,
        )
        output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        throughput = trainer.meter.total(trainer.state.num_input_tokens_seen)
        history = tuple(entry for entry in trainer.state.log_history if "loss" in entry)
        eval_loss = _final_eval_loss(trainer.state.log_history) if eval_examples else None
        if is_main_process():
            _write_curve(trainer.state.log_history, curve_csv)
    return TrainResult(
        # the last logged loss: the Trainer's own mean is wrong after a resume (it divides by every step)
        train_loss=float(history[-1]["loss"]) if history else float(output.training_loss),
        eval_loss=None if eval_loss is None else float(eval_loss),
        tokens_per_second=throughput["tokens_per_second"],
        steps=trainer.state.global_step,
        mfu=throughput.get("mfu"),
        history=history,
        resumed_from=trainer_step(resume),
    )
