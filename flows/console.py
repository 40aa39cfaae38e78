"""What `chatgraft run` shows a person: one line per stage (name, reproduced or cached, time, its headline metric)
and, on a terminal, one live line with the running stage's latest output (its progress bar). The stage's whole
output goes to its log file, kept with the run and logged to the stage's MLflow run."""
from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

LOGS = Path(".chatgraft") / "logs"  # under the project: each run's stage logs, the UI's log
HEADLINES = ("answer_accuracy", "eval_loss", "loss", "target_perplexity", "kept", "new_tokens")  # first found
TAIL_BYTES = 4096


def last_output_line(log: Path) -> str:
    """The latest line a stage wrote to `log`, a progress bar's last redraw included ("" when none yet)."""
    try:
        with log.open("rb") as read:
            read.seek(max(0, log.stat().st_size - TAIL_BYTES))
            tail = read.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.replace("\r", "\n").split("\n")]
    return next((line for line in reversed(lines) if line), "")


def last_lines(log: Path, count: int = 20) -> str:
    """The last `count` lines of a stage's log, progress bars' redraws collapsed to their last."""
    text = log.read_bytes().decode("utf-8", "replace") if log.exists() else ""  # \r kept: bars redraw with it
    lines = [next((part for part in reversed(line.split("\r")) if part.strip()), "") for line in text.split("\n")]
    return "\n".join([line for line in lines if line.strip()][-count:])


@contextmanager
def live_line(stage: str, log: Path, out: TextIO = sys.stderr, seconds: float = 0.5) -> Iterator[None]:
    """While the block runs, redraw one terminal line with the stage's latest output; nothing when `out` is not a
    terminal (a scheduler's log, a pipe)."""
    if not out.isatty():
        yield
        return
    stop = threading.Event()

    def redraw() -> None:
        while not stop.wait(seconds):
            width = shutil.get_terminal_size().columns - 1
            out.write(f"\r\x1b[2K{stage}: {last_output_line(log)}"[:width + 5])
            out.flush()

    drawer = threading.Thread(target=redraw, daemon=True)
    drawer.start()
    try:
        yield
    finally:
        stop.set()
        drawer.join()
        out.write("\r\x1b[2K")
        out.flush()


def stage_line(stage: str, outcome: str, seconds: float, metrics: dict[str, float]) -> str:
    """`stage  reproduced|cached|failed  time  headline metric`, the one line a stage gets."""
    headline = next((f"{name} {metrics[name]:.4g}" for name in HEADLINES if name in metrics), "")
    return f"{stage:<26} {outcome:<10} {seconds:7.1f} s  {headline}".rstrip()


def say(line: str, out: TextIO | None = None) -> None:
    """Write a line for the person at the terminal (stdout unless `out`), not through Prefect's logger, which the
    quiet mode silences."""
    out = out or sys.stdout
    out.write(line + "\n")
    out.flush()


def divert_output(log: Path) -> TextIO:
    """From now on, append to `log` what this process and the processes it starts write to stdout and stderr
    (libraries' log lines, warnings, a server's traceback as it stops); returns a stream to the terminal for what
    the command itself says. For a command that serves until it is stopped: the streams are not restored."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    terminal = os.fdopen(os.dup(2), "w", buffering=1)
    with log.open("a") as file:
        for descriptor in (1, 2):
            os.dup2(file.fileno(), descriptor)
    return terminal


def task_line(task: str, outcome: str) -> str:
    """`task  what it did`, the line a flow task around the stages gets (intake, register, promote, push)."""
    return f"{task:<26} {outcome}"


CHATGRAFT_CODE = tuple(str(Path(__file__).parent.with_name(package)) + os.sep for package in ("flows", "pipelines"))


def _said_by_chatgraft(record: logging.LogRecord) -> bool:
    """Whether chatgraft's own code logged `record` (through Prefect's run logger or its own), and not as the report
    of an error, which the command prints itself in one line: what a library logs (Prefect's reports of a failed or
    crashed run, its temporary server, MLflow's database set-up) is not the person's business unless --verbose."""
    return record.pathname.startswith(CHATGRAFT_CODE) and not record.exc_info


def _terminal_handlers() -> set[logging.Handler]:
    """Every log handler that writes to the terminal: Prefect's console handlers, any on stdout or stderr."""
    from prefect.logging.handlers import PrefectConsoleHandler

    terminal = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    loggers = [logging.getLogger(), *(found for found in logging.Logger.manager.loggerDict.values()
                                      if isinstance(found, logging.Logger))]
    return {handler for logger in loggers for handler in logger.handlers if isinstance(handler, PrefectConsoleHandler)
            or getattr(handler, "stream", None) in terminal}


def quiet_exit() -> None:
    """From now on, hide what Prefect logs while the process exits: its client services' warnings as they finish
    their work ("Still processing items: 1 items remaining...": the event of a move being sent), its temporary
    server's "Stopping temporary server": a person's command has already said what happened. Errors still show."""
    logging.getLogger("prefect.services").setLevel(logging.ERROR)
    logging.getLogger("prefect").addFilter(_an_error)  # a logger's filter sees its own records, not its children's


def _an_error(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def _write_nothing(*_: str) -> None:
    pass


@contextmanager
def quiet_console(level: int = logging.WARNING) -> Iterator[None]:
    """While the block runs, the console shows only the warnings and errors chatgraft itself logs: every handler
    writing to the terminal (Prefect's, uvicorn's) drops lines below `level` and what the libraries log (it still
    reaches the flow run's log in the API), and MLflow's own stream (its log, its event lines "Successfully registered
    model", "Created version") and run links are silenced; all restored after."""
    from mlflow.environment_variables import MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT
    from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

    no_links = MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.name  # "🏃 View run ..." of each run on a tracking server
    levels = {handler: handler.level for handler in _terminal_handlers()}
    links = os.environ.get(no_links)
    for handler in levels:
        handler.setLevel(max(level, handler.level))
        handler.addFilter(_said_by_chatgraft)
    # not `.enabled = False`: MLflow turns its stream on again whenever an autologged call (an evaluation) ends
    MLFLOW_LOGGING_STREAM.write = MLFLOW_LOGGING_STREAM.flush = _write_nothing
    os.environ[no_links] = "true"
    try:
        yield
    finally:
        del MLFLOW_LOGGING_STREAM.write, MLFLOW_LOGGING_STREAM.flush
        if links is None:
            del os.environ[no_links]
        else:
            os.environ[no_links] = links
        for handler, before in levels.items():
            handler.setLevel(before)
            handler.removeFilter(_said_by_chatgraft)
