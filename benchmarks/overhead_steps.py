"""One bookkeeping step per process, so the overhead benchmark measures each step's own memory:
`python -m benchmarks.overhead_steps {store-init,repro,log-run,register,load} PROJECT [CHECKPOINT]`.

Each step goes through the code the flow runs (DvcProject, stage_runs, registry) on the project the benchmark
built, and prints as its last line the seconds of the call the flow makes (its process has the store open and
these modules imported: that is excluded, what the call itself imports lazily is not).
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

MODEL = "bench-overhead"
EXPERIMENT = "bench-overhead"
REQUEST = {"messages": [{"role": "user", "content": "w1 w2 w3"}], "max_tokens": 8}


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def store_init(root: Path) -> float:
    """The project's MLflow store and experiment, made once (its migrations are not a model's cost)."""
    from flows.tracking.store import open_store

    return timed(lambda: open_store(root, EXPERIMENT))


def repro(root: Path) -> float:
    """`dvc repro` of the merge stage, as the flow's task runs it: the merge command, then DVC's commit."""
    from flows.dvc_project import DvcProject

    return timed(lambda: DvcProject(root).reproduce("merge"))


def log_run(root: Path) -> float:
    """The merge stage's MLflow run: what the stage declares in dvc.yaml (its report), as the flow logs it."""
    from flows.dvc_project import DvcProject
    from flows.tracking.stage_runs import log_stage_outputs, tracked_run
    from flows.tracking.store import open_store

    store = open_store(root, EXPERIMENT)

    def log() -> None:
        with tracked_run(store, "merge", {"stage": "merge"}) as run_id:
            log_stage_outputs(store, run_id, root, DvcProject(root).spec("merge"), {})
    return timed(log)


def register(root: Path, checkpoint: Path) -> float:
    """The flow's registration of a checkpoint (logged from its folder) and the champion alias on it."""
    from flows.tracking import registry
    from flows.tracking.stage_runs import tracked_run
    from flows.tracking.store import open_store

    store = open_store(root, EXPERIMENT)

    def register_champion() -> None:
        with tracked_run(store, "register", {"stage": "register"}) as run_id:
            version = registry.register_model(store, run_id, MODEL, checkpoint, {}, REQUEST)
        registry.set_alias(store, MODEL, "champion", version)
    return timed(register_champion)


def load(root: Path) -> float:
    """The champion loaded back by alias, as a person or a server does: `mlflow.transformers.load_model`."""
    import mlflow

    from flows.tracking.store import open_store

    open_store(root, EXPERIMENT)
    return timed(lambda: mlflow.transformers.load_model(f"models:/{MODEL}@champion"))


STEPS: dict[str, Callable[..., float]] = {"store-init": store_init, "repro": repro, "log-run": log_run,
                                          "register": register, "load": load}


def main() -> None:
    step, root, *rest = sys.argv[1:]
    print(json.dumps({"seconds": STEPS[step](Path(root), *map(Path, rest))}))


if __name__ == "__main__":
    main()
