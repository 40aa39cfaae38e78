"""`chatgraft watch`: the receiver of MLflow's registry webhooks. A move of `champion` made in the MLflow UI is
recorded in the promotion history and, under `promote.ui_moves: guard`, undone when it breaks the policy.

Only deliveries signed with the project's secret are heard; anything else gets a 4xx and changes nothing. MLflow
retries a delivery that fails; a receiver that was down reconciles at start (the alias against the history).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from flows.promotion import hear_outside_move
from flows.tracking import registry
from flows.tracking.store import Store
from flows.tracking.webhooks import project_keys, register_webhook
from pipelines.config import PromoteParams

PATH = "/mlflow-webhook"
MAX_SKEW_SECONDS = 300  # a delivery signed longer ago than this is refused (a replay)
LOGGER = logging.getLogger("chatgraft.watch")


class WatchError(RuntimeError):
    """The receiver cannot start; the message says why."""


def verify_delivery(secret: str, headers: Mapping[str, str], body: bytes, now: float) -> None:
    """Raise HTTPException 401 unless the delivery carries MLflow's headers, a fresh timestamp and the HMAC-SHA256
    signature of `<delivery id>.<timestamp>.<body>` made with `secret`."""
    delivery, stamp, signature = (headers.get(f"x-mlflow-{name}") for name in ("delivery-id", "timestamp",
                                                                             "signature"))
    if not (delivery and stamp and signature):
        raise HTTPException(401, "unsigned delivery: X-MLflow-Delivery-Id, X-MLflow-Timestamp and "
                                 "X-MLflow-Signature are required")
    if not stamp.isdigit() or abs(now - int(stamp)) > MAX_SKEW_SECONDS:
        raise HTTPException(401, f"X-MLflow-Timestamp {stamp!r} is not within {MAX_SKEW_SECONDS} s of now")
    digest = hmac.new(secret.encode(), f"{delivery}.{stamp}.".encode() + body, hashlib.sha256).digest()
    if not hmac.compare_digest(f"v1,{base64.b64encode(digest).decode()}", signature):
        raise HTTPException(401, "bad signature")


def parse_alias_event(body: bytes, model: str) -> tuple[str, str | None] | None:
    """(alias, version or None when removed) of a `model_version_alias` event about `model`; None for any other
    event. HTTPException 400 for malformed JSON, 422 for missing fields, 404 for
    another model."""
    try:
        event = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HTTPException(400, f"malformed JSON: {error}") from None
    if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
        raise HTTPException(422, "the delivery has no `data` object")
    if event.get("entity") != "model_version_alias" or event.get("action") not in ("created", "deleted"):
        return None
    data = event["data"]
    if not isinstance(data.get("name"), str) or not isinstance(data.get("alias"), str):
        raise HTTPException(422, "an alias event needs data.name and data.alias")
    if data["name"] != model:
        raise HTTPException(404, f"unknown registered model {data['name']!r}: this receiver watches {model!r}")
    version = data.get("version") if event["action"] == "created" else None
    if event["action"] == "created" and not isinstance(version, str):
        raise HTTPException(422, "model_version_alias.created needs data.version")
    return data["alias"], version


def create_app(store: Store, policy: PromoteParams, secret: str) -> FastAPI:
    """The receiver: POST PATH hears champion moves; GET /health answers while it runs."""
    app = FastAPI(title="chatgraft watch")
    one_at_a_time = threading.Lock()
    heard: OrderedDict[str, str] = OrderedDict()  # delivery id -> outcome: a retried delivery is answered again

    def hear(delivery: str, version: str | None) -> str:
        with one_at_a_time:
            if delivery not in heard:
                heard[delivery] = hear_outside_move(store, policy, version, policy.ui_moves)
                LOGGER.info("%s", heard[delivery])
                while len(heard) > 1000:
                    heard.popitem(last=False)
            return heard[delivery]

    @app.post(PATH)
    async def receive(request: Request) -> dict[str, str]:
        body = await request.body()
        verify_delivery(secret, request.headers, body, time.time())
        event = parse_alias_event(body, policy.registered_model)
        if event is None or event[0] != registry.CHAMPION:
            return {"result": "ignored: not a move of champion"}
        return {"result": await run_in_threadpool(hear, request.headers["x-mlflow-delivery-id"], event[1])}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "model": policy.registered_model, "ui_moves": policy.ui_moves}

    return app


def local_address(host: str, port: int) -> str:
    """The URL this machine reaches a server listening on `host`:`port` at (the loopback for a wildcard host)."""
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"


def webhook_url(host: str, port: int) -> str:
    """The address MLflow delivers to for a receiver listening on `host`:`port`."""
    return local_address(host, port) + PATH


def require_free_port(host: str, port: int, option: str) -> None:
    """Raise WatchError naming `option` when a server already listens on `host`:`port`."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a port just closed is free
        try:
            probe.bind((host, port))
        except OSError as error:
            raise WatchError(f"{host}:{port} is taken ({error.strerror}): choose another port with {option}") from None


def serve_watch(root: Path, host: str, port: int, url: str | None = None) -> None:
    """Register the project's webhook on its MLflow server (MLFLOW_TRACKING_URI), reconcile a move missed while no
    receiver ran, then hear deliveries at `url` until SIGINT or SIGTERM; each move heard is logged on stderr."""
    import uvicorn

    from flows.context import open_project

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # none yet: Prefect sets its own
    LOGGER.setLevel(logging.INFO)
    ctx = open_project(root)
    if not ctx.store.uri.startswith(("http://", "https://")):
        raise WatchError(f"MLflow delivers webhooks only from a tracking server, and this project's store is "
                         f"{ctx.store.uri}: run `chatgraft ui` (which starts both), or set MLFLOW_TRACKING_URI")
    policy, keys = ctx.params.promote, project_keys(ctx.root)
    register_webhook(ctx.store, url or webhook_url(host, port), keys.secret)
    holder = registry.alias_holder(ctx.store, policy.registered_model, registry.CHAMPION)
    LOGGER.info("at start: %s", hear_outside_move(ctx.store, policy, holder, policy.ui_moves))
    uvicorn.run(create_app(ctx.store, policy, keys.secret), host=host, port=port, log_level="warning")
