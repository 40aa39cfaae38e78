"""The one place that talks to MLflow: the store, stage runs with lineage, and the model registry."""
from flows.tracking.store import Store, open_store

__all__ = ["Store", "open_store"]
