"""Concurrency slots that come back after a crash: the `gpu` tag limit and the promotion limit (the promotion lock of
a registry on a server, see `flows.promotion_lock`).

A run killed with SIGKILL cannot give its slots back. The `gpu` slot is held by a task run (Prefect's tag
concurrency), so it comes back when that task run leaves Running: a run that starts marks the task runs of dead
flow runs Crashed, and Prefect releases their leases. The promotion limit is a leased global limit: a dead holder
stops renewing, and the lease is revoked when it expires, by the server's repossessor or, with Prefect's ephemeral
API where no repossessor runs, by one pass of it here. Nobody waits silently: a wait logs who holds the slot and
ends with an error naming them after `flow.slot_wait_seconds`.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import TaskRun
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import get_current_settings
from prefect.states import Crashed
from prefect.utilities.asyncutils import run_coro_as_sync

from flows.promotion_lock import SlotWaitTimeout, lock_timeout

if TYPE_CHECKING:
    from prefect.server.concurrency.lease_storage import ConcurrencyLeaseStorage

GPU_TAG = "gpu"
GPU_LIMIT = f"tag:{GPU_TAG}"
PROMOTION_LIMIT = "chatgraft-promotion"
PROMOTION_LEASE_SECONDS = 60  # the shortest lease Prefect grants: a killed promotion's slot comes back after it
UNLEASED_CONFIRM_SECONDS = 2.0  # a slot seen without a lease twice this far apart is an orphan, not an acquire
POLL_SECONDS = 10.0
Logger = logging.Logger | logging.LoggerAdapter


def ensure_concurrency_limits(gpu_slots: int | None = None) -> None:
    """Create (or resize) the promotion lock and, when given, the `gpu` tag limit on the Prefect API."""
    limits = {PROMOTION_LIMIT: 1} | ({GPU_LIMIT: gpu_slots} if gpu_slots is not None else {})
    with get_client(sync_client=True) as client:
        for name, slots in limits.items():
            try:
                client.upsert_global_concurrency_limit_by_name(name, slots)
            except ObjectAlreadyExists:  # another process created it between the read and the create
                pass


def embedded() -> bool:
    """Whether flows talk to Prefect's ephemeral API (no server, so no repossessor), not to a server."""
    return get_current_settings().api.url is None


def revoke_expired_leases() -> int:
    """One pass of Prefect's lease repossessor over the embedded default's database; returns leases revoked."""
    from prefect.server.concurrency.lease_storage import get_concurrency_lease_storage
    from prefect.server.database import provide_database_interface
    from prefect.server.services.repossessor import revoke_expired_lease

    async def revoke() -> int:
        storage = get_concurrency_lease_storage()
        expired = await expired_lease_ids(storage)
        for lease_id in expired:
            await revoke_expired_lease(lease_id, db=provide_database_interface(), lease_storage=storage)
        return len(expired)

    return run_coro_as_sync(revoke()) or 0


async def expired_lease_ids(storage: ConcurrencyLeaseStorage) -> set[UUID]:
    """The expired leases the storage's index lists, and, for file storage, those whose file was written but
    whose index entry never was: a holder killed between the two writes (seen with a killed promotion) leaves one
    that the index scan never finds, and the lock it holds would never come back."""
    expired = set(await storage.read_expired_lease_ids())
    folder = getattr(storage, "storage_path", None)
    if folder is None:
        return expired
    now = datetime.now(timezone.utc)
    for lease_file in Path(folder).glob("*.json"):
        try:
            lease_id = UUID(lease_file.stem)
        except ValueError:  # the index itself
            continue
        lease = await storage.read_lease(lease_id)
        if lease is not None and lease.expiration < now:
            expired.add(lease_id)
    return expired


async def _leased_slots(storage: ConcurrencyLeaseStorage, limit_id: UUID) -> int:
    """Slots of limit `limit_id` that a lease (live or expired, not yet revoked) holds."""
    lease_ids = set(await storage.read_active_lease_ids(limit=100_000)) | await expired_lease_ids(storage)
    leases = [await storage.read_lease(lease_id) for lease_id in lease_ids]
    return sum(lease.metadata.slots if lease.metadata else 1
               for lease in leases if lease is not None and limit_id in lease.resource_ids)


def _give_back(client: SyncPrefectClient, name: str, slots: int) -> None:
    # the API refuses an occupancy of 0 s (it must be > 0); it only matters to limits with slot decay
    client.release_concurrency_slots(names=[name], slots=slots, occupancy_seconds=1.0)


def _unleased_slots(name: str) -> int:
    """Slots limit `name` counts that no lease holds, on the embedded default's database and lease files."""
    from prefect.server.concurrency.lease_storage import get_concurrency_lease_storage

    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return 0
    leased = run_coro_as_sync(_leased_slots(get_concurrency_lease_storage(), limit.id)) or 0
    return max(0, limit.active_slots - leased)


def release_unleased_slots(name: str, confirm_seconds: float = UNLEASED_CONFIRM_SECONDS) -> int:
    """Give back the slots limit `name` counts with no lease behind them: a holder killed inside the embedded API's
    acquire, after the slot was counted and before its lease was written, leaves one that no lease expiry ever
    returns (the promotion lock would be held for good). Seen twice `confirm_seconds` apart, so an acquire in
    progress (milliseconds between the two writes) is never taken for one. Returns the slots given back."""
    if not _unleased_slots(name):
        return 0
    time.sleep(confirm_seconds)
    orphans = _unleased_slots(name)
    if orphans:
        with get_client(sync_client=True) as client:
            _give_back(client, name, orphans)
    return orphans


def gpu_holders(client: SyncPrefectClient) -> list[TaskRun]:
    """The task runs holding a `gpu` slot now."""
    try:
        holders = client.read_concurrency_limit_by_tag(GPU_TAG).active_slots
    except ObjectNotFound:
        return []
    runs = []
    for task_run_id in holders:
        try:
            runs.append(client.read_task_run(task_run_id))
        except ObjectNotFound:
            continue
    return runs


def _dead(client: SyncPrefectClient, task_run: TaskRun, dead_flow_runs: set[UUID]) -> bool:
    """Whether an unfinished task run belongs to a flow run that is dead or over (a finished one keeps its state)."""
    if task_run.state is None or task_run.state.is_final() or task_run.flow_run_id is None:
        return False
    if task_run.flow_run_id in dead_flow_runs:
        return True
    state = client.read_flow_run(task_run.flow_run_id).state
    return state is not None and state.is_final()


def release_dead_gpu_slots(dead_flow_runs: set[UUID], reason: str) -> list[str]:
    """Crash the task runs that hold a `gpu` slot for a flow run that is over or dead (Prefect then releases
    their leases), and give back slots counted with no lease behind them. Returns what was released."""
    released = []
    with get_client(sync_client=True) as client:
        for task_run in gpu_holders(client):
            if _dead(client, task_run, dead_flow_runs):
                client.set_task_run_state(task_run.id, Crashed(message=reason), force=True)
                released.append(f"task run {task_run.name}")
        orphans = _orphan_slots(client)
        if orphans:
            _give_back(client, GPU_LIMIT, orphans)
            released.append(f"{orphans} slot(s) held by no lease")
    return released


def _orphan_slots(client: SyncPrefectClient) -> int:
    """Slots the `gpu` limit counts that no lease holds (a holder whose lease died with an embedded server).
    Holders are read before and after the count: a release in between makes this pass give back nothing."""
    try:
        before = {t.id for t in gpu_holders(client)}
        counted = client.read_global_concurrency_limit_by_name(GPU_LIMIT).active_slots
    except ObjectNotFound:
        return 0
    after = {t.id for t in gpu_holders(client)}
    return max(0, counted - len(after)) if before == after else 0


def describe_gpu_holders() -> str:
    """Who holds the `gpu` slots: task run, flow run and since when."""
    with get_client(sync_client=True) as client:
        parts = []
        for task_run in gpu_holders(client):
            flow_run = client.read_flow_run(task_run.flow_run_id) if task_run.flow_run_id else None
            since = task_run.start_time.isoformat(timespec="seconds") if task_run.start_time else "an unknown time"
            parts.append(f"task run {task_run.name} of flow run {flow_run.name if flow_run else '?'} since {since}")
    return "; ".join(parts) or "no task run (its slot is counted with no lease behind it)"


def _gpu_full() -> bool:
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(GPU_LIMIT)
        except ObjectNotFound:
            return False
    return limit.active_slots >= limit.limit


def wait_for_gpu_slot(stage: str, wait_seconds: float, logger: Logger, poll_seconds: float = POLL_SECONDS) -> None:
    """Return when a `gpu` slot is free (the task then takes it through its tag); while all are taken, give back
    those of dead runs, log who holds the others, and raise SlotWaitTimeout naming them after `wait_seconds`."""
    deadline = time.monotonic() + wait_seconds
    while _gpu_full():
        release_dead_gpu_slots(set(), "its flow run is over; a waiting run gave its gpu slot back")
        if not _gpu_full():
            return
        if time.monotonic() >= deadline:
            raise SlotWaitTimeout(f"gave up waiting for a gpu slot for {stage} after {wait_seconds:.0f} s "
                                  f"(flow.slot_wait_seconds): held by {describe_gpu_holders()}")
        logger.info("waiting for a gpu slot for %s: held by %s", stage, describe_gpu_holders())
        time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))


@contextmanager
def promotion_limit(wait_seconds: float, logger: Logger, poll_seconds: float = POLL_SECONDS) -> Iterator[None]:
    """Hold the one slot of the promotion limit (strict: a missing limit is an error, never an unguarded move); a
    crashed holder's slot comes back PROMOTION_LEASE_SECONDS after its last renewal."""
    ensure_concurrency_limits()
    deadline = time.monotonic() + wait_seconds
    with ExitStack() as held:
        while True:
            if embedded():
                revoke_expired_leases()
                if release_unleased_slots(PROMOTION_LIMIT):
                    logger.warning("gave back the promotion lock: counted, but held by no lease (a promotion killed "
                                   "while taking it)")
            try:
                held.enter_context(concurrency(PROMOTION_LIMIT, occupy=1, strict=True, lease_duration=
                                               PROMOTION_LEASE_SECONDS,
                                               timeout_seconds=min(poll_seconds, max(0.1, deadline - time.monotonic()))))
                break
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise lock_timeout(wait_seconds) from None
                logger.info("waiting for the promotion lock: another promotion holds it")
        yield
