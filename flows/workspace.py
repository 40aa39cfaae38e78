"""One run per project workspace at a time: a lock the operating system releases when its holder dies.

A second run in the same workspace waits, saying which flow run holds it and since when, or refuses at once.
Because the lock dies with its process, whoever holds it knows that any other run of this workspace still
marked running in Prefect or MLflow was killed.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

STATE_DIR = ".chatgraft"  # run state that is neither code nor a pipeline output: git- and DVC-ignored
POLL_SECONDS = 30.0


class WorkspaceBusy(RuntimeError):
    """Another run holds the workspace; the message names it."""


@dataclass(frozen=True)
class Holder:
    """Who holds the workspace."""

    flow_run: str
    pid: int
    host: str
    since: str

    def describe(self) -> str:
        """One line for logs and errors."""
        return f"flow run {self.flow_run} (pid {self.pid} on {self.host}) since {self.since}"


def workspace_id(root: Path) -> str:
    """A name for the workspace that is the same for every run in it: host and project path."""
    return f"{socket.gethostname()}:{root.resolve()}"


def _read_holder(path: Path) -> Holder | None:
    try:
        return Holder(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


@contextmanager
def workspace_lock(root: Path, flow_run: str, wait_seconds: float, logger: logging.Logger | logging.LoggerAdapter,
                   poll_seconds: float = POLL_SECONDS) -> Iterator[None]:
    """Hold the workspace for one run; wait up to `wait_seconds` for another (0: refuse at once), logging who
    holds it at every poll, then raise WorkspaceBusy naming it."""
    state = root / STATE_DIR
    state.mkdir(exist_ok=True)
    lock, holder_file = FileLock(state / "run.lock"), state / "run.json"
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            lock.acquire(timeout=max(0.0, min(poll_seconds, deadline - time.monotonic())))
            break
        except Timeout:
            holder = _read_holder(holder_file)
            who = holder.describe() if holder else "another run"
            if time.monotonic() >= deadline:
                raise WorkspaceBusy(f"{root} is busy: {who} is running in it (waited {wait_seconds:.0f} s; "
                                    "flow.workspace_wait_seconds)") from None
            logger.info("waiting for the workspace %s: %s is running in it", root, who)
    try:
        since = datetime.now(timezone.utc).isoformat(timespec="seconds")
        holder_file.write_text(json.dumps(asdict(Holder(flow_run, os.getpid(), socket.gethostname(), since))))
        yield
    finally:
        holder_file.unlink(missing_ok=True)
        lock.release()
