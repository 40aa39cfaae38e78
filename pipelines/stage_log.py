"""A stage's wall time and the device it computed on, appended to `$CHATGRAFT_STAGE_LOG` (a JSON line a stage) when
that is set: what `make gpu-check` reads to show each stage's device and time."""
from __future__ import annotations

import atexit
import json
import os
import sys
import time

import psutil

STAGE_LOG = "CHATGRAFT_STAGE_LOG"


def _cuda_peak_gib() -> float | None:
    """The stage's peak CUDA memory in GiB, or None when it never touched CUDA (torch not even imported)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    return max(torch.cuda.max_memory_reserved(i) for i in range(torch.cuda.device_count())) / 2**30


def record_stage(argv: list[str]) -> None:
    """When `$CHATGRAFT_STAGE_LOG` names a file, append this process's stage (its arguments), seconds and device
    to it as it exits; the time counts from the process's start, imports included."""
    path = os.environ.get(STAGE_LOG)
    if not path:
        return

    def append() -> None:
        peak, started = _cuda_peak_gib(), psutil.Process().create_time()
        row = {"stage": " ".join(argv), "seconds": round(time.time() - started, 2),
               "device": "cpu" if peak is None else "cuda", "cuda_peak_gib": None if peak is None else round(peak, 2)}
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps(row) + "\n")

    atexit.register(append)
