"""What `chatgraft run` shows: a stage's latest output line (a progress bar's last redraw), its one summary line."""
from __future__ import annotations

import io
import logging
from pathlib import Path

from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

from flows.console import last_lines, last_output_line, live_line, quiet_console, quiet_exit, stage_line


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


def test_prefect_console_shows_warnings_only_inside_the_block_and_nothing_leaks() -> None:
    from prefect.logging.handlers import PrefectConsoleHandler

    handler = PrefectConsoleHandler()
    logging.getLogger("prefect.test-quiet-console").addHandler(handler)
    try:
        with quiet_console():
            assert handler.level == logging.WARNING and not MLFLOW_LOGGING_STREAM.enabled
            failure = logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1, "Encountered exception "
                                        "during execution: StageFailed(...)", None, None)
            assert not handler.filter(failure)  # chatgraft prints the error itself, in one line
            assert handler.filter(logging.LogRecord("prefect", logging.WARNING, __file__, 1, "slow", None, None))
        assert handler.level == logging.NOTSET  # a later run in this process (a test's CliRunner) is not quieted
        assert handler.filter(failure) and MLFLOW_LOGGING_STREAM.enabled
    finally:
        logging.getLogger("prefect.test-quiet-console").removeHandler(handler)


def test_a_persons_command_hides_prefects_exit_chatter_but_not_its_errors() -> None:
    services, worker = logging.getLogger("prefect.services"), logging.getLogger("prefect.services.EventsWorker")
    seen: list[str] = []
    collector = logging.Handler()
    collector.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    worker.addHandler(collector)
    before = services.level
    try:
        quiet_exit()
        worker.warning("Still processing items: 1 items remaining...")  # what a move's command printed at exit
        worker.error("Service failed to process item")
    finally:
        services.setLevel(before)
        worker.removeHandler(collector)
    assert seen == ["Service failed to process item"]
