"""One merge per process, so the benchmark measures each contender's own memory:
`python -m benchmarks.merge_contenders {engine,naive,io_floor,mergekit} BASE CHAT CP OUT`.
Prints the seconds the merge itself took (interpreter start and the contender's module imports excluded) as its
last line; the benchmark also times the whole process, which is what `time chatgraft merge ...` shows a user.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

RATIO = 1.0
BUFFER = 64 << 20


def engine(base: Path, chat: Path, cp: Path, out: Path) -> None:
    """chatgraft's streaming merge, default settings (overlap rows)."""
    from pipelines.config import MergeSettings
    from pipelines.merge.chat_vector import merge_chat_vector

    merge_chat_vector(base=base, chat=chat, cp=cp, out=out, ratio=RATIO, settings=MergeSettings())


def naive(base: Path, chat: Path, cp: Path, out: Path) -> None:
    """The seed recipe: three whole models in memory, state dicts added, save_pretrained."""
    import torch
    from transformers import AutoModelForCausalLM

    models = {role: AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
              for role, path in (("base", base), ("chat", chat), ("cp", cp))}
    states = {role: model.state_dict() for role, model in models.items()}
    with torch.no_grad():
        for name, tensor in states["cp"].items():
            tensor.copy_(tensor.float() + RATIO * (states["chat"][name].float() - states["base"][name].float()))
    models["cp"].save_pretrained(out)


def io_floor(base: Path, chat: Path, cp: Path, out: Path) -> None:
    """Read the three inputs, write one file of the output's size, fsync: no merge can be faster."""
    buffer = bytearray(BUFFER)
    view = memoryview(buffer)
    size = 0
    for model in (base, chat, cp):
        for file in model.glob("*.safetensors"):
            with open(file, "rb", buffering=0) as handle:
                while handle.readinto(buffer):
                    pass
            if model == cp:
                size += file.stat().st_size
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "model.safetensors", "wb", buffering=0) as handle:
        while size > 0:
            size -= handle.write(view[:min(size, BUFFER)])
        os.fsync(handle.fileno())


def mergekit(base: Path, chat: Path, cp: Path, out: Path) -> None:
    """mergekit's task_arithmetic with base as base model: base + (cp - base) + ratio * (chat - base)."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    config = MergeConfiguration.model_validate({
        "merge_method": "task_arithmetic", "base_model": str(base), "dtype": "bfloat16",
        "parameters": {"normalize": False},
        "models": [{"model": str(cp), "parameters": {"weight": 1.0}},
                   {"model": str(chat), "parameters": {"weight": RATIO}}],
    })
    run_merge(config, str(out), MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))


CONTENDERS = {"engine": engine, "naive": naive, "io_floor": io_floor, "mergekit": mergekit}
PRELOAD = {"engine": ["pipelines.merge"], "naive": ["transformers"], "mergekit": ["mergekit.merge"], "io_floor": []}

if __name__ == "__main__":
    name, *paths = sys.argv[1:]
    for module in PRELOAD[name]:
        __import__(module)
    start = time.perf_counter()
    CONTENDERS[name](*(Path(p) for p in paths))
    print(json.dumps({"seconds": time.perf_counter() - start}))
