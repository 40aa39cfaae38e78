"""Stopping processes: SIGTERM, then SIGKILL for what is left after a grace period (psutil only: cheap to import)."""
from __future__ import annotations

from contextlib import suppress

import psutil


def stop_processes(processes: list[psutil.Process], grace_seconds: float) -> None:
    """SIGTERM each of `processes`, SIGKILL those alive `grace_seconds` later, and wait for them; ones already gone
    are skipped."""
    for process in processes:
        with suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace_seconds)
    for process in alive:
        with suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=grace_seconds)
