"""One run per project workspace at a time: a lock the operating system releases when its holder dies.

A second run in the same workspace waits, saying which run holds it and since when, or refuses at once.
Because the lock dies with its process, whoever holds it knows that any other run of this workspace still
marked running in Prefect or MLflow was killed.
"""
from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from pipelines.atomic import write_text_atomic

STATE_DIR = ".chatgraft"  # run state that is neither code nor a pipeline output: git- and DVC-ignored
POLL_SECONDS = 30.0

_held: set[Path] = set()  # the workspaces this process holds now


class WorkspaceBusy(RuntimeError):
    """Another run holds the workspace; the message names it."""


@dataclass(frozen=True)
class Holder:
    """Who holds the workspace."""

    run: str
    pid: int
    host: str
    since: str

    def describe(self) -> str:
        """One line for logs and errors."""
        return f"{self.run} (pid {self.pid} on {self.host}) since {self.since}"


def workspace_id(root: Path) -> str:
    """A name for the workspace that is the same for every run in it: host and project path."""
    return f"{socket.gethostname()}:{root.resolve()}"


def _read_holder(path: Path) -> Holder | None:
    try:
        return Holder(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _acquire(lock: FileLock, root: Path, wait_seconds: float, say: Callable[[str], None],
             poll_seconds: float) -> None:
    """Take the lock, saying who holds it at once and at every poll while waiting; WorkspaceBusy past the wait."""
    deadline, timeout = time.monotonic() + wait_seconds, 0.0
    while True:
        try:
            lock.acquire(timeout=timeout)
            return
        except Timeout:
            holder = _read_holder(root / STATE_DIR / "run.json")
            who = holder.describe() if holder else "another run"
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkspaceBusy(f"{root} is busy: {who} is running in it (waited {wait_seconds:.0f} s; "
                                    "flow.workspace_wait_seconds)") from None
            say(f"waiting for the workspace {root}: {who} is running in it")
            timeout = min(poll_seconds, left)


@contextmanager
def workspace_lock(root: Path, run: str, wait_seconds: float, say: Callable[[str], None],
                   poll_seconds: float = POLL_SECONDS, held: bool = False) -> Iterator[None]:
    """Hold the workspace for `run` (a description: "flow run NAME (ID)"); wait up to `wait_seconds` for another
    (0: refuse at once), passing a line naming the holder to `say` at once and at every poll, then raise
    WorkspaceBusy naming it.

    With `held`, this process already holds it (`chatgraft run` takes it before it starts the flow): `run` is only
    named as its holder, since a second lock on the file in one process would wait for the first until it gave up.
    """
    root = root.resolve()
    holder_file = root / STATE_DIR / "run.json"
    if held:
        if root not in _held:
            raise RuntimeError(f"{root}: said to be held by this process, which does not hold it")
        before = _read_holder(holder_file)  # written by this process: the workspace is held since it took it
        _name_holder(holder_file, run, before.since if before else None)
        yield
        return
    (root / STATE_DIR).mkdir(exist_ok=True)
    lock = FileLock(root / STATE_DIR / "run.lock")
    _acquire(lock, root, wait_seconds, say, poll_seconds)
    try:
        _held.add(root)
        _name_holder(holder_file, run, None)
        yield
    finally:
        _held.discard(root)
        holder_file.unlink(missing_ok=True)
        lock.release()


def _name_holder(holder_file: Path, run: str, since: str | None) -> None:
    """Name `run`, of this process, as the holder since `since` (None: now)."""
    since = since or datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_text_atomic(holder_file, json.dumps(asdict(Holder(run, os.getpid(), socket.gethostname(), since))))
