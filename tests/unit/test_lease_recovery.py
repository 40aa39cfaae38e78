"""The promotion lock comes back after its holder is killed, even between the lease file and its index entry."""
from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from uuid import uuid4

from prefect.server.concurrency.lease_storage import ConcurrencyLimitLeaseMetadata
from prefect.server.concurrency.lease_storage.filesystem import ConcurrencyLeaseStorage

from flows.slots import expired_lease_ids


def test_a_lease_written_but_never_indexed_is_found_once_expired(tmp_path: Path) -> None:
    storage = ConcurrencyLeaseStorage(storage_path=tmp_path)
    one_slot = ConcurrencyLimitLeaseMetadata(slots=1)

    async def leases() -> tuple:
        unindexed = await storage.create_lease([uuid4()], timedelta(seconds=-1), one_slot)
        indexed = await storage.create_lease([uuid4()], timedelta(seconds=-1), one_slot)
        live = await storage.create_lease([uuid4()], timedelta(minutes=5), one_slot)
        index_file = tmp_path / "expirations.json"  # the holder killed after writing its lease, before the index
        index = json.loads(index_file.read_text())
        del index[str(unindexed.id)]
        index_file.write_text(json.dumps(index))
        return unindexed, indexed, live, set(await storage.read_expired_lease_ids()), await expired_lease_ids(storage)

    unindexed, indexed, live, by_index, found = asyncio.run(leases())
    assert by_index == {indexed.id}  # Prefect's own scan misses the unindexed one: its slot would never come back
    assert found == {unindexed.id, indexed.id} and live.id not in found
