"""The promotion lock: one move of `champion` at a time among every process that moves it in one registry.

The lock follows where the registry lives. A local store (the embedded sqlite db, a local folder) is moved only by
processes of this machine: a file lock beside it serialises them all (the flow, `chatgraft watch`, a person's
commands), needs no server, and dies with a killed holder. A registry on a tracking server (http(s), or a
database other hosts reach) is moved from several hosts: the lock is then Prefect's global concurrency limit on the
Prefect server every host sees (`flows.slots.promotion_limit`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock, Timeout

POLL_SECONDS = 10.0
LOCK_SUFFIX = ".promotion.lock"
# the lock file of a local store reached through a server: `chatgraft ui` serves the embedded store over http, and
# its watcher must take the lock every local process of that store takes
LOCK_ENV = "CHATGRAFT_PROMOTION_LOCK"
Logger = logging.Logger | logging.LoggerAdapter


class SlotWaitTimeout(TimeoutError):
    """A slot (the promotion lock, a `gpu` slot) stayed taken for longer than `flow.slot_wait_seconds`; the message
    names who holds it."""


def local_store(uri: str) -> Path | None:
    """The file or folder of a registry kept on this machine (a sqlite file, a local path or `file:` URI); None for
    one that other hosts reach (a tracking server, PostgreSQL, MySQL, Databricks) or none can (in-memory sqlite)."""
    # MLflow's sqlite store and tracking client have imported both already
    from mlflow.utils.file_utils import local_file_uri_to_path
    from mlflow.utils.uri import is_local_uri
    from sqlalchemy.engine import make_url

    if urlparse(uri).scheme == "sqlite":
        database = make_url(uri).database
        return Path(database).resolve() if database and database != ":memory:" else None
    return Path(local_file_uri_to_path(uri)).resolve() if is_local_uri(uri) else None


def lock_file(uri: str) -> Path | None:
    """The promotion lock file of the registry at `uri`: beside its local store, so that every process using the
    store finds it from the store alone (or the file CHATGRAFT_PROMOTION_LOCK names, or the one a running `chatgraft
    ui` serving a local store at `uri` announced); None for a registry on a server."""
    if given := os.environ.get(LOCK_ENV):
        return Path(given)
    if urlparse(uri).scheme in ("http", "https") and (served := _served_lock(uri)) is not None:
        return served
    store = local_store(uri)
    return store.with_name(store.name + LOCK_SUFFIX) if store is not None else None


def served_store_record(url: str) -> Path:
    """Where a running `chatgraft ui` says that `url` serves a local store, and which lock file that store has: on
    this machine, since only its processes reach the store's file."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "chatgraft" / "served-stores" / f"{hashlib.sha256(url.rstrip('/').encode()).hexdigest()[:16]}.json"


def announce_served_store(url: str, lock: Path) -> Path:
    """Say, while this process runs, that `url` serves a local store whose promotion lock is `lock`, so that a
    person's command or a flow given that address takes the file lock the UI's watcher takes; returns the record,
    for the caller to remove when it stops."""
    from pipelines.atomic import write_json_atomic

    record = served_store_record(url)
    write_json_atomic(record, {"url": url.rstrip("/"), "lock": str(lock), "pid": os.getpid()})
    return record


def _served_lock(uri: str) -> Path | None:
    """The lock file of the local store a running `chatgraft ui` serves at `uri`, if one does."""
    import psutil

    try:
        served = json.loads(served_store_record(uri).read_text())
    except (OSError, ValueError):
        return None
    alive = isinstance(served.get("pid"), int) and psutil.pid_exists(served["pid"])
    return Path(served["lock"]) if alive and served.get("url") == uri.rstrip("/") else None


def promotion_lock(uri: str, wait_seconds: float, logger: Logger,
                   poll_seconds: float = POLL_SECONDS) -> AbstractContextManager[None]:
    """Hold the promotion lock of the registry at `uri` (see the module's docstring), waiting at most
    `wait_seconds` and logging the wait at every poll; SlotWaitTimeout after that."""
    path = lock_file(uri)
    if path is None:
        from flows.slots import promotion_limit  # Prefect is imported only for a registry on a server

        return promotion_limit(wait_seconds, logger, poll_seconds)
    return _file_lock(path, wait_seconds, logger, poll_seconds)


@contextmanager
def _file_lock(path: Path, wait_seconds: float, logger: Logger, poll_seconds: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            lock.acquire(timeout=min(poll_seconds, max(0.0, deadline - time.monotonic())))
            break
        except Timeout:
            if time.monotonic() >= deadline:
                raise lock_timeout(wait_seconds) from None
            logger.info("waiting for the promotion lock (%s): another promotion holds it", path)
    try:
        yield
    finally:
        lock.release()


def lock_timeout(wait_seconds: float) -> SlotWaitTimeout:
    """The error of a move that waited `wait_seconds` for the promotion lock, whichever kind it is."""
    return SlotWaitTimeout(f"gave up waiting for the promotion lock after {wait_seconds:.0f} s "
                           "(flow.slot_wait_seconds): another promotion (a flow's, or a person's chatgraft promote / "
                           "rollback) holds it")
