"""Settings every chatgraft process needs here: no model hub is reachable, telemetry has nowhere to go, and
Prefect's concurrency leases outlive the process that took them."""
from __future__ import annotations

import os

OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    # The embedded default starts a Prefect API per process; leases kept in its memory die with a killed run while
    # the slots they hold stay counted. On disk (PREFECT_HOME), the next run finds and releases them.
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
    # The first start of the embedded API creates its database: on two busy cores that took over Prefect's 20 s.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def apply_offline_defaults() -> None:
    """Set each default unless the environment already names a value."""
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
