"""`chatgraft serve` needs a Prefect server for its schedule and triggers: without one it refuses in one line."""
from __future__ import annotations

from pathlib import Path

from prefect.settings import PREFECT_API_URL, temporary_settings
from typer.testing import CliRunner

from flows.cli import app


def test_serve_without_a_prefect_server_refuses_in_one_line(tmp_path: Path) -> None:
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = CliRunner().invoke(app, ["serve", "--project-dir", str(tmp_path)])
    assert result.exit_code == 2
    (line,) = result.output.splitlines()
    assert line.startswith("error: chatgraft serve needs a Prefect server") and "PREFECT_API_URL" in line
