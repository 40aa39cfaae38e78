"""Screenshots of a project's MLflow UI for the README: the registered model, a version's page, the promotion history
(its runs table: a project with a few moves shows more than one row), and the champion's answers beside CP's in the
evaluation view.

    make screenshots   (python infra/local/screenshots.py --project-dir . --out docs/images)

Starts `chatgraft ui` on the project (after `make run`), drives Debian's Chromium with Playwright, stops the UI.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow import MlflowClient
from playwright.sync_api import Page, sync_playwright

from flows.tracking.history import HISTORY_EXPERIMENT
from flows.tracking.store import embedded_uri
from pipelines.config import load_params


def _wait(url: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer in {seconds} s")


def _shoot(page: Page, url: str, out: Path, wait_for: str) -> None:
    page.goto(url)
    page.get_by_text(wait_for).last.wait_for()
    assistant = page.get_by_role("button", name="Close")  # the MLflow Assistant panel, when it is open
    if assistant.count():
        assistant.first.click()
    page.wait_for_timeout(1500)
    page.screenshot(path=out, full_page=True)
    print(f"wrote {out}")


def _evaluation_run(client: MlflowClient, experiment: str, candidate: str) -> str:
    """The newest run holding `candidate`'s answers (its evaluate stage's)."""
    kind, _, item = candidate.partition("-")
    stage = f"evaluate-{kind}@{item}" if item else ("evaluate-cp" if kind == "cp" else f"evaluate@{kind}")
    (run,) = client.search_runs([experiment], f"tags.stage = '{stage}' AND tags.cached = 'false'",
                                order_by=["attributes.start_time DESC"], max_results=1)
    return run.info.run_id


def take_screenshots(project_dir: Path, out: Path, port: int = 5700) -> None:
    """Open the project's UI and write registry.png, version.png, history.png and answers.png into `out`."""
    params = load_params(project_dir / "params.yaml").promote
    model = params.registered_model
    client = MlflowClient(embedded_uri(project_dir), embedded_uri(project_dir))
    champion = client.get_model_version_by_alias(model, "champion")
    history = client.get_experiment_by_name(HISTORY_EXPERIMENT).experiment_id
    runs = client.get_experiment_by_name(params.experiment).experiment_id
    answers = (f"evaluation-runs?selectedRunUuid={_evaluation_run(client, runs, champion.tags['candidate'])}"
               f"&compareToRunUuid={_evaluation_run(client, runs, 'cp')}")
    out.mkdir(parents=True, exist_ok=True)
    ui = subprocess.Popen([sys.executable, "-m", "flows", "ui", "--project-dir", str(project_dir), "--port",
                           str(port), "--watch-port", str(port + 1)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env={k: v for k, v in os.environ.items()
                                                          if k != "MLFLOW_TRACKING_URI"})
    try:
        url = f"http://127.0.0.1:{port}"
        _wait(f"http://127.0.0.1:{port + 1}/health")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            _shoot(page, f"{url}/#/models/{model}", out / "registry.png", "champion")
            _shoot(page, f"{url}/#/models/{model}/versions/{champion.version}", out / "version.png",
                   "promotion.decision")
            _shoot(page, f"{url}/#/experiments/{history}/runs", out / "history.png", "matching run")
            _shoot(page, f"{url}/#/experiments/{runs}/{answers}", out / "answers.png", "question")
            browser.close()
    finally:
        ui.send_signal(signal.SIGTERM)
        ui.wait(60)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project-dir", type=Path, default=Path("."))
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    take_screenshots(args.project_dir.resolve(), args.out)
