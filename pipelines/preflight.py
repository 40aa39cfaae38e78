"""What a run would trip on, found before its first stage: every file and folder params.yaml names, read and checked;
the CP setup against the machine (`chatgraft check`); and, for a real run, settings still sized for the tiny world.

Relative paths are read from the project root, where the stages run. Each problem names the params key and
the file, line or tensor at fault; a run with problems does not start. The flow imports this module before every
run: the checks that need torch or transformers import them when a path asks for them.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.config import CPParams, Params
from pipelines.corpus.documents import check_document_folder
from pipelines.evaluate.inputs import eval_inputs
from pipelines.layout import Layout

Check = Callable[[Path], object]
GIB = 2**30  # pipelines.training.memory's unit, without importing the training stack


def _model_folder(allow_pickle: bool = False) -> Check:
    def check(path: Path) -> object:
        from pipelines.model_folder import check_model_folder  # torch, safetensors and transformers

        return check_model_folder(path, allow_pickle)
    return check


def _sft_set(path: Path) -> object:
    from pipelines.align.sft_set import read_sft_set  # the curation's dedup: datasketch and numpy

    return read_sft_set(path)


def _named_inputs(params: Params) -> Iterator[tuple[str, str, Check]]:
    """(params key, path as written, check) for every input the params name."""
    upstream, merge, evaluate = params.upstream, params.merge, params.eval
    documents = params.data.documents
    if params.data.source == "documents" and documents and "://" not in documents:  # S3 is read by the import
        yield "data.documents", documents, check_document_folder
    if upstream.base_path and upstream.chat_path:
        yield "upstream.base_path", upstream.base_path, _model_folder()
        yield "upstream.chat_path", upstream.chat_path, _model_folder()
    for i, vector in enumerate(merge.vectors):
        for role in ("base", "tuned"):
            yield f"merge.vectors.{i}.{role}", getattr(vector, role), _model_folder(merge.allow_pickle)
    for item in eval_inputs(evaluate, Layout(Path()).corpus).values():
        if item.key and not item.in_corpus:  # what the corpus stage writes is not there before a run
            yield item.key, str(item.path), item.reader
    if params.align.data:
        yield "align.data", params.align.data, _sft_set


def input_problems(params: Params, root: Path) -> list[str]:
    """Every problem with the inputs `params` name, as `key: what is wrong` lines; empty when all are usable. A
    real base/chat pair whose folders are usable is also checked against itself (can it be merged?)."""
    problems = []
    for key, written, check in _named_inputs(params):
        try:
            check(root / written)  # an absolute path stays itself
        except (ValueError, OSError) as error:  # CheckpointError is a ValueError
            problems.append(f"{key}: {error}")
    upstream = params.upstream
    if upstream.base_path and upstream.chat_path and not any(p.startswith("upstream.") for p in problems):
        from pipelines.upstream.pair_check import check_pair  # the tokenizers: transformers

        pair = check_pair({"base": root / upstream.base_path, "chat": root / upstream.chat_path})
        problems += [f"upstream: {problem}" for problem in pair.problems]
    return problems


@dataclass(frozen=True)
class Machine:
    """What CP would run on here: the visible CUDA GPUs, else the CPU cores; and the memory each holds."""

    gpus: int
    gpu_memory: int  # bytes of the smallest visible GPU; 0 without one
    cpu_cores: int
    memory: int  # bytes of RAM

    def __str__(self) -> str:
        if self.gpus:
            return f"{self.gpus} CUDA GPU(s), the smallest {self.gpu_memory / GIB:.1f} GiB"
        return f"no CUDA GPU, {self.cpu_cores} CPU core(s), {self.memory / GIB:.1f} GiB of memory"


def this_machine() -> Machine:
    """The machine this process runs on, as the cp stage would see it (CUDA_VISIBLE_DEVICES and CPU affinity
    respected)."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    smallest = min((torch.cuda.get_device_properties(i).total_memory for i in range(gpus)), default=0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return Machine(gpus, smallest, cores, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def cp_setup_problems(cp: CPParams, machine: Machine, per_process: int | None) -> list[str]:
    """What in the CP setup `machine` cannot run: FSDP without CUDA, more processes than devices (GPUs, or CPU
    cores where there is none), and the memory estimate per process (None: none made) beyond what holds it."""
    distributed, problems = cp.distributed, []
    if distributed.strategy == "fsdp" and not machine.gpus:
        problems.append("cp.distributed.strategy: fsdp needs CUDA GPUs (accelerate runs FSDP on accelerators only) "
                        "and none is visible here: use ddp (gloo on CPU), or check on the GPU machine")
    devices, kind = (machine.gpus, "CUDA GPU(s)") if machine.gpus else (machine.cpu_cores, "CPU core(s), no GPU")
    if distributed.nproc_per_node > devices:
        problems.append(f"cp.distributed.nproc_per_node: {distributed.nproc_per_node} processes but this machine has "
                        f"{devices} {kind}: set it to {devices} or fewer (cp.batch_size stays the global batch)")
    if per_process is not None and (problem := _memory_problem(distributed.nproc_per_node, per_process, machine)):
        problems.append(problem)
    return problems


def _memory_problem(processes: int, per_process: int, machine: Machine) -> str | None:
    """A clear overflow: one process's estimate beyond the smallest GPU, or all of them beyond the CPU's RAM."""
    if machine.gpus:
        need, holds = per_process, machine.gpu_memory
        what = f"each process needs about {need / GIB:.1f} GiB but the smallest GPU here holds {holds / GIB:.1f} GiB"
    else:
        need, holds = processes * per_process, machine.memory
        what = (f"its {processes} process(es) need about {need / GIB:.1f} GiB together but this machine (no GPU) "
                f"has {holds / GIB:.1f} GiB")
    if need <= holds:
        return None
    return (f"cp: {what} (the estimate above; allocator slack comes on top): set "
            "cp.gradient_checkpointing, a smaller cp.batch_size or cp.block_size, cp.lora, or shard over more GPUs "
            "(cp.distributed.nproc_per_node with strategy fsdp)")


@dataclass(frozen=True)
class TinyWorldDefault:
    """A default sized for the tiny world's models, the bound a real model needs, and what the real run sets."""

    key: str
    bound: float
    at_least: bool  # a real model needs the bound or more (else: or less)
    why: str
    real_run: float  # examples/real-run/params.yaml (README "A real run")

    def warning(self, value: float) -> str | None:
        """The warning for `value`, or None when it is on a real model's side of the bound."""
        if (value >= self.bound) if self.at_least else (value <= self.bound):
            return None
        return (f"{self.key}: {value:g} is sized for the tiny world; a real model needs {self.bound:g} or "
                f"{'more' if self.at_least else 'less'} ({self.why}); examples/real-run/params.yaml sets "
                f"{self.real_run:g} (README \"A real run\")")


TINY_WORLD_DEFAULTS = (
    TinyWorldDefault("eval.max_new_tokens", 128, True, "longer answers are cut and count as not terminated: a real "
                     "chat model's termination_rate was 0.35 at 24 tokens against 0.90 at 128", 256),
    TinyWorldDefault("eval.block_size", 1024, True, "held-out documents are cut at this many tokens for "
                     "target_perplexity", 2048),
    TinyWorldDefault("cp.block_size", 1024, True, "CP trains on blocks of this many tokens: short ones teach "
                     "fragments of documents", 4096),
    TinyWorldDefault("cp.learning_rate", 1e-4, False, "a rate for models trained from scratch wrecks what a "
                     "pretrained one knows", 2e-5),
    TinyWorldDefault("data.heldout_share", 0.02, False, "every held-out document is text CP never trains on", 0.01),
    TinyWorldDefault("data.heldout_min", 100, True, "a perplexity over a few documents is noise", 200),
    TinyWorldDefault("align.train.block_size", 1024, True, "SFT examples are cut at this many tokens", 2048),
    TinyWorldDefault("align.train.learning_rate", 2e-4, False, "LoRA on a pretrained model", 1e-4),
    TinyWorldDefault("align.curation.max_chars", 2000, True, "longer answers are dropped from the SFT set", 4000),
)


def setting_value(params: Params, key: str) -> float:
    """The number at a dotted params key, e.g. `cp.block_size`."""
    value: Any = params
    for part in key.split("."):
        value = getattr(value, part)
    return float(value)


def tiny_world_warnings(params: Params) -> list[str]:
    """With data.source documents, each setting still on the tiny world's side of what a real model needs: the
    run works, but its numbers mislead (align.* only when align runs)."""
    if params.data.source != "documents":
        return []
    defaults = [d for d in TINY_WORLD_DEFAULTS if params.align.methods or not d.key.startswith("align.")]
    return [warning for d in defaults if (warning := d.warning(setting_value(params, d.key)))]
