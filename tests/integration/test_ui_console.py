"""What `chatgraft ui` shows a person: one banner (the UI, the receiver, the log file, how to stop), the servers'
per-request lines in .chatgraft/logs/ui.log only, and a SIGTERM that stops both servers without a traceback."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import answers_health, free_port, wait_until

pytestmark = pytest.mark.integration


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_ui_prints_one_banner_logs_each_request_and_stops_cleanly(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"promote": {"guardrails": {}}}))
    port, watch_port = free_port(), free_port()
    url, receiver = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{watch_port}"
    terminal = tmp_path / "terminal.txt"
    with terminal.open("w") as out:
        ui = subprocess.Popen([sys.executable, "-m", "flows", "ui", "--project-dir", str(tmp_path), "--port",
                               str(port), "--watch-port", str(watch_port)], stdout=out, stderr=subprocess.STDOUT,
                              env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
    log = tmp_path / ".chatgraft" / "logs" / "ui.log"
    try:
        wait_until(lambda: answers_health(receiver), "chatgraft ui and its receiver", seconds=180)
        assert terminal.read_text().splitlines() == [
            f"MLflow UI   {url}",
            f"receiver    {receiver}/mlflow-webhook (champion moves made in the UI)",
            f"log         {log}",
            "Ctrl-C stops both",
        ]
        marker = f"probe-{uuid.uuid4().hex}"
        requests.get(f"{url}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": marker}, timeout=30)
        wait_until(lambda: marker in log.read_text(), "the request's line in the UI's log", seconds=30, interval=0.2)
    finally:
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=60)
    shown = terminal.read_text()
    assert marker not in shown and "Traceback" not in shown and len(shown.splitlines()) == 4
    assert ui.returncode == 128 + signal.SIGTERM
    assert not listening(port) and not listening(watch_port)  # the UI's server stopped with it
