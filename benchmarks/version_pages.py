"""What keeping the version pages true costs inside the promotion lock, on the embedded sqlite store:
`python -m benchmarks.version_pages [VERSIONS...]` (default 10 50 100) prints, for a model with that many versions,
the seconds of a decision that moves champion (every page rewritten), of one that moves nothing (its version's page),
and of the rewrite alone when every page changed and when none did (reads only)."""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from flows.environment import apply_offline_defaults


def main(counts: list[int]) -> None:
    apply_offline_defaults()
    from prefect.events.clients import NullEventsClient
    from prefect.events.worker import EventsWorker

    from flows.tracking import open_store, registry

    EventsWorker.set_client_override(NullEventsClient)  # the events' cost is not the pages'
    print("versions  move (all pages)  no move (one page)  rewrite all  rewrite none")
    with tempfile.TemporaryDirectory() as root:
        store = open_store(Path(root), "bench-pages")
        for count in counts:
            model = f"bench-pages-{count}"
            store.client.create_registered_model(model)
            for index in range(count):
                run = store.client.create_run(store.experiment_id)
                store.client.log_metric(run.info.run_id, "answer_accuracy", index / count)
                store.client.create_model_version(model, run.info.artifact_uri, run.info.run_id)
            registry.set_alias(store, model, registry.CHAMPION, "1")
            registry.record_decision(store, model, "1", "promoted by hand", ["bench"], "bench", None)  # warm
            started = time.perf_counter()
            registry.set_alias(store, model, registry.CHAMPION, "2")
            registry.record_decision(store, model, "2", "promoted by hand", ["bench"], "bench", "1", "1")
            move = time.perf_counter() - started
            started = time.perf_counter()
            registry.record_decision(store, model, "3", "not promoted", ["bench"], "bench", "2")
            stay = time.perf_counter() - started
            store.client.set_registered_model_alias(model, registry.CHAMPION, "1")  # every page now stale
            started = time.perf_counter()
            registry.rewrite_pages(store, model)
            rewrite_all = time.perf_counter() - started
            started = time.perf_counter()
            registry.rewrite_pages(store, model)
            rewrite_none = time.perf_counter() - started
            print(f"{count:8d}  {move:16.2f}  {stay:18.2f}  {rewrite_all:11.2f}  {rewrite_none:12.2f}", flush=True)

if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [10, 50, 100])
