"""What `chatgraft run` shows a person: one line per stage (name, reproduced or cached, time, its headline metric)
and, on a terminal, one live line with the running stage's latest output (its progress bar). The stage's whole
output goes to its log file, kept with the run and logged to the stage's MLflow run."""
from __future__ import annotations

import logging
import shutil
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

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


def say(line: str, out: TextIO = sys.stdout) -> None:
    """Write a line for the person at the terminal (not through Prefect's logger, which the quiet mode silences)."""
    out.write(line + "\n")
    out.flush()


def _not_a_failure_report(record: logging.LogRecord) -> bool:
    """False for Prefect's report of a failed task or flow (its state, or the exception with a traceback): the
    command prints the error itself, in one line when the user's input caused it."""
    message = record.getMessage()
    return not (record.exc_info or message.startswith(("Finished in state Failed", "Encountered exception")))


def quiet_exit() -> None:
    """From now on, hide the warnings Prefect's client services log while they finish their work as the process
    exits ("Still processing items: 1 items remaining...": the event of a move being sent): a person's command has
    already said what happened. Their errors still show."""
    logging.getLogger("prefect.services").setLevel(logging.ERROR)


@contextmanager
def quiet_console(level: int = logging.WARNING) -> Iterator[None]:
    """While the block runs, Prefect's console handlers show `level` and above only, without its reports of a
    failure (everything still reaches the flow run's log in the API), and MLflow's event lines ("Successfully
    registered model", "Created version") are silenced; both are restored after."""
    from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(found for found in logging.Logger.manager.loggerDict.values()
                                      if isinstance(found, logging.Logger))]
    handlers = {handler for logger in loggers for handler in logger.handlers
                if isinstance(handler, PrefectConsoleHandler)}
    levels, mlflow_events = {handler: handler.level for handler in handlers}, MLFLOW_LOGGING_STREAM.enabled
    for handler in handlers:
        handler.setLevel(max(level, handler.level))
        handler.addFilter(_not_a_failure_report)
    MLFLOW_LOGGING_STREAM.enabled = False
    try:
        yield
    finally:
        MLFLOW_LOGGING_STREAM.enabled = mlflow_events
        for handler, before in levels.items():
            handler.setLevel(before)
            handler.removeFilter(_not_a_failure_report)
