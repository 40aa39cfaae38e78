"""MLflow registry webhooks that tell `chatgraft watch` when `champion` moves: the project's keys, the settings an
MLflow server needs to deliver to it, and the one webhook registered on the store.

MLflow delivers webhooks only from a tracking server (the UI's, or one named by MLFLOW_TRACKING_URI), signs each
delivery with HMAC-SHA256 over `<delivery id>.<timestamp>.<body>` with the webhook's secret, and keeps that secret
encrypted with MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY: a server started without a fixed key makes one up and cannot
read the secrets after a restart, so `chatgraft ui` gives its server the project's.
"""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet

from flows.tracking.store import Store

WEBHOOK_NAME = "chatgraft-watch"
EVENTS = ("model_version_alias.created", "model_version_alias.deleted")
KEYS_FILE = Path("mlflow") / "webhook-keys.json"


@dataclass(frozen=True)
class WebhookKeys:
    """The HMAC secret deliveries are signed with, and the key the embedded store's server encrypts it with."""

    secret: str
    encryption_key: str


def project_keys(root: Path) -> WebhookKeys:
    """The project's webhook keys (mlflow/webhook-keys.json, readable by its owner only), made on first use."""
    path = root / KEYS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # two first uses: one file wins
    except FileExistsError:
        return WebhookKeys(**json.loads(path.read_text()))
    keys = WebhookKeys(secrets.token_urlsafe(32), Fernet.generate_key().decode())
    with os.fdopen(descriptor, "w") as out:
        json.dump(vars(keys), out)
    return keys


def server_environment(keys: WebhookKeys) -> dict[str, str]:
    """What an MLflow server chatgraft starts needs to deliver to a receiver on this machine: the project's
    encryption key, plain http to a loopback address, and one delivery at a time (so moves arrive in order)."""
    return {
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": keys.encryption_key,
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_DELIVERY_MAX_WORKERS": "1",
        "MLFLOW_WEBHOOK_CACHE_TTL": "2",  # a webhook registered after the server started is used within seconds
    }


def register_webhook(store: Store, url: str, secret: str) -> str:
    """Create the project's webhook on the store, or point the existing one at `url` with `secret` (so a restarted
    receiver does not add a second one); returns its id. `store` must be a tracking server."""
    for webhook in store.client.list_webhooks(max_results=1000):
        if webhook.name == WEBHOOK_NAME:
            store.client.update_webhook(webhook.webhook_id, url=url, events=list(EVENTS), secret=secret,
                                        status="ACTIVE")
            return webhook.webhook_id
    return store.client.create_webhook(WEBHOOK_NAME, url, list(EVENTS), secret=secret,
                                       description="champion moves, heard by chatgraft watch").webhook_id
