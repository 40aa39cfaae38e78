"""What `chatgraft run` shows: a stage's latest output line (a progress bar's last redraw), its one summary line, a
task's line, and nothing of what Prefect and MLflow log unless --verbose."""
from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from contextlib import nullcontext, redirect_stderr
from pathlib import Path

import prefect.task_engine
from mlflow.utils.logging_utils import enable_logging, eprint
from prefect.logging.handlers import PrefectConsoleHandler

import flows.tasks
from flows.console import last_lines, last_output_line, live_line, quiet_console, quiet_exit, stage_line, task_line

REPO = Path(__file__).resolve().parents[2]


def test_the_latest_line_is_a_progress_bars_last_redraw(tmp_path: Path) -> None:
    log = tmp_path / "cp.log"
    assert last_output_line(log) == ""  # not written yet
    log.write_text("Running stage 'cp':\n 10%|#         | 2/20\r 50%|#####     | 10/20\r 55%|#####5    | 11/20\r")
    assert last_output_line(log) == "55%|#####5    | 11/20"
    assert last_lines(log, 2) == "Running stage 'cp':\n 55%|#####5    | 11/20"


def test_one_line_a_stage_with_its_headline_metric() -> None:
    line = stage_line("evaluate-merged@1.0", "reproduced", 12.34, {"repetition_rate": 0.0, "answer_accuracy": 0.6417})
    assert line.split() == ["evaluate-merged@1.0", "reproduced", "12.3", "s", "answer_accuracy", "0.6417"]
    assert stage_line("plots", "cached", 0.2, {}).split() == ["plots", "cached", "0.2", "s"]


def test_no_live_line_off_a_terminal(tmp_path: Path) -> None:
    out = io.StringIO()  # not a tty: a scheduler's log gets nothing redrawn
    with live_line("cp", tmp_path / "cp.log", out, seconds=0.01):
        pass
    assert out.getvalue() == ""


def test_prefect_console_shows_chatgraft_warnings_only_inside_the_block_and_nothing_leaks() -> None:
    def record(level: int, message: str, by: str) -> logging.LogRecord:
        return logging.LogRecord("prefect.task_runs", level, by, 1, message, None, None)

    handler = PrefectConsoleHandler()
    logging.getLogger("prefect.test-quiet-console").addHandler(handler)
    mlflow_says = io.StringIO()
    try:
        with quiet_console(), redirect_stderr(mlflow_says):
            assert handler.level == logging.WARNING
            enable_logging()  # what MLflow does as an autologged call (an evaluation) ends
            eprint("Successfully registered model 'chatgraft-chat'.")
            ours = record(logging.WARNING, "no candidate met the guardrails", flows.tasks.__file__)
            assert handler.filter(ours)
            crash = record(logging.ERROR, "Crash detected! Execution was aborted", prefect.task_engine.__file__)
            assert not handler.filter(crash)  # Prefect's report: chatgraft prints the error itself, in one line
        assert mlflow_says.getvalue() == ""
        assert handler.level == logging.NOTSET  # a later run in this process (a test's CliRunner) is not quieted
        assert handler.filter(crash)
        with redirect_stderr(mlflow_says):
            eprint("Created version '1' of model 'chatgraft-chat'.")
        assert mlflow_says.getvalue() == "Created version '1' of model 'chatgraft-chat'.\n"
    finally:
        logging.getLogger("prefect.test-quiet-console").removeHandler(handler)


def run_a_flow_that_logs(quiet: bool, store: str) -> None:
    """A Prefect flow, on a temporary Prefect server, whose task registers a model in a new MLflow store and says
    its line, run as `chatgraft run` runs it (quiet) or with --verbose: what both print is the test's."""
    import mlflow
    from prefect import flow, task

    from flows.console import quiet_exit, say, task_line

    @task(name="register")
    def register() -> None:
        mlflow.set_tracking_uri(store)
        with mlflow.start_run():
            model = mlflow.initialize_logged_model(name="model")
        version = mlflow.register_model(f"models:/{model.model_id}", "tiny").version
        say(task_line("register", f"version {version}: tiny (registered now)"))

    with quiet_console() if quiet else nullcontext():
        flow(name="tiny")(register)()
    if quiet:
        quiet_exit()


def test_a_quiet_run_shows_its_task_lines_and_nothing_of_prefect_or_mlflow(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    runs = {quiet: subprocess.Popen(  # at once: each starts a Prefect server
        [sys.executable, "-c", "from tests.unit.test_console import run_a_flow_that_logs; "
         f"run_a_flow_that_logs({quiet}, {f'sqlite:///{tmp_path}/{quiet}.db'!r})"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for quiet in (True, False)}
    shown = {quiet: run.communicate(timeout=240)[0] for quiet, run in runs.items()}
    assert [run.returncode for run in runs.values()] == [0, 0], shown
    # what --verbose shows (Prefect's "Stopping temporary server" too, unless the interpreter's exit outruns it)
    foreign = ["Starting temporary server", "Creating initial MLflow database tables", "Created version",
               "Finished in state"]
    assert all(line in shown[False] for line in foreign), shown[False]
    (line,) = shown[True].splitlines()  # the version's number is the store's: another run may have taken 1
    assert re.fullmatch(re.escape(task_line("register", "version X: tiny (registered now)")).replace("X", r"\d+"),
                        line), line


def test_a_persons_command_hides_prefects_exit_chatter_but_not_its_errors() -> None:
    services, worker = logging.getLogger("prefect.services"), logging.getLogger("prefect.services.EventsWorker")
    seen: list[str] = []
    collector = logging.Handler()
    collector.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    prefect = logging.getLogger("prefect")
    prefect.addHandler(collector)  # the worker's records reach it too
    before = services.level
    try:
        quiet_exit()
        worker.warning("Still processing items: 1 items remaining...")  # what a move's command printed at exit
        worker.error("Service failed to process item")
        prefect.info("Stopping temporary server on http://127.0.0.1:8537")
    finally:
        services.setLevel(before)
        prefect.filters.clear()
        prefect.removeHandler(collector)
    assert seen == ["Service failed to process item"]
