"""Where `eval.engine: openai` asks for a candidate's answers: the OpenAI-compatible server already running at
$CHATGRAFT_EVAL_BASE_URL, or `eval.server.command` started for the candidate, waited for, and stopped with its whole
process group (its workers too), also when the evaluation fails or is interrupted."""
from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil

from pipelines.config import EvalServerParams

EVAL_BASE_URL = "CHATGRAFT_EVAL_BASE_URL"  # the candidates' server, apart from the judge's OPENAI_BASE_URL
EVAL_API_KEY = "CHATGRAFT_EVAL_API_KEY"  # sent as a bearer token when set, never kept in params
EVAL_MODEL = "CHATGRAFT_EVAL_MODEL"  # the name the running server serves under (vLLM's --served-model-name)
STOP_GRACE_S = 30.0  # a server's time to exit on SIGTERM before its group is killed
LOG_TAIL_LINES, LOG_TAIL_BYTES = 5, 16384  # what an error quotes of the server's log
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies
RUN_MARK = "CHATGRAFT_RUN_MARK"  # set in every process a `chatgraft run` starts (flows/watchdog.py)
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None  # looked up before any fork


class EndpointError(ValueError):
    """The candidates' server failed to start, to answer, or to answer well. A ValueError, like every bad setting a
    stage names: its message names the command or URL, the candidate and the server's log."""


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible server that answers for one candidate."""

    base_url: str  # ends in /v1, as OPENAI_BASE_URL does
    model: str  # the model name requests give: the candidate's folder, as the server command was given it
    named: str  # how errors name the server: its command and log, or the environment variable and URL
    source: str  # how the speed report names it: the command as params write it, or the URL's host (and
                 # the served name asked)
    api_key: str | None = None


@contextmanager
def candidate_endpoint(params: EvalServerParams, model_dir: Path) -> Iterator[Endpoint]:
    """The endpoint that answers for the candidate in `model_dir`: `params.command` started for it (and stopped on
    leaving), or the server at $CHATGRAFT_EVAL_BASE_URL when there is no command."""
    model = str(model_dir.resolve())
    if params.command is None:
        yield running_endpoint(model)
        return
    with started_server(params, model) as endpoint:
        yield endpoint


def running_endpoint(model: str) -> Endpoint:
    """The server already running at $CHATGRAFT_EVAL_BASE_URL, asked for the model $CHATGRAFT_EVAL_MODEL names (a
    server that serves the candidate under a name of its own), else for `model`; an error when no URL is set."""
    base_url = os.environ.get(EVAL_BASE_URL, "").rstrip("/")
    if not base_url:
        raise EndpointError(f"eval.engine is openai and eval.server.command is null, but {EVAL_BASE_URL} is not set: "
                            "name the running server (e.g. http://127.0.0.1:8000/v1) or give eval.server.command")
    if os.environ.get(EVAL_MODEL) and os.environ.get(RUN_MARK):
        raise EndpointError(f"{EVAL_MODEL} names one served model for every candidate, so a run's evaluations "
                            "would all score it: unset it for `chatgraft run` (it is for `chatgraft evaluate` of that "
                            "model)")
    served_name = os.environ.get(EVAL_MODEL)
    host = urlsplit(base_url).netloc.rpartition("@")[2]  # the report keeps no credentials and no folder path
    return Endpoint(base_url, served_name or model, f"{EVAL_BASE_URL}={base_url}",
                    f"{host}, model {served_name}" if served_name else host, os.environ.get(EVAL_API_KEY))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def started_server(params: EvalServerParams, model: str) -> Iterator[Endpoint]:
    """`params.command` serving `model` on a free port, its output in a temporary log; the log is removed after a
    clean run and kept (and named) when anything fails."""
    port = free_port()
    args = [part.format(model=model, port=port) for part in shlex.split(params.command)]
    log_dir = Path(tempfile.mkdtemp(prefix="chatgraft-eval-server-"))
    log_path = log_dir / "server.log"
    command = f"eval.server.command `{shlex.join(args)}`"
    named = f"{command} (its output: {log_path})"
    with log_path.open("wb") as log:
        try:
            process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True,  # a group of its own, stopped as one
                                       preexec_fn=partial(_terminated_with_parent, os.getpid()))
        except OSError as error:
            shutil.rmtree(log_dir)
            raise EndpointError(f"{command} did not start: {error}") from None
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        wait_until_answering(process, base_url, params.start_timeout_s, named, log_path)
        yield Endpoint(base_url, model, named, params.command, os.environ.get(EVAL_API_KEY))
    finally:
        stop_process_group(process)
    shutil.rmtree(log_dir)


def _terminated_with_parent(stage_pid: int) -> None:
    """In the server's process before it runs the command: Linux sends it SIGTERM when the stage dies, also by
    SIGKILL (the OOM killer), which runs no `finally`; else the server would hold the accelerator's memory until a
    person stops it. Only the server's leader gets it, as from a stage that stops it (its group then gets SIGKILL
    too): a server's workers end with their leader. Nothing elsewhere than Linux."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != stage_pid:  # the stage died before the signal was asked for
            os._exit(1)


def wait_until_answering(process: subprocess.Popen, base_url: str, timeout_s: float, named: str,
                         log_path: Path) -> None:
    """Return once GET {base_url}/models gets any HTTP answer (`transformers serve` answers it with 500 when the HF
    cache has no folder; vLLM only listens once its model is loaded); an error when the server exits or the time
    runs out first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EndpointError(f"{named} exited with code {process.returncode} before answering GET "
                                f"{base_url}/models{log_tail(log_path)}")
        try:
            httpx.get(f"{base_url}/models", timeout=5)
            return
        except httpx.TransportError:
            time.sleep(0.5)
    raise EndpointError(f"{named} did not answer GET {base_url}/models within {timeout_s:g} s "
                        f"(eval.server.start_timeout_s){log_tail(log_path)}")


def log_tail(log_path: Path) -> str:
    """The last lines of a server's log, to end an error message with (empty when it wrote nothing)."""
    with log_path.open("rb") as log:
        log.seek(max(0, log_path.stat().st_size - LOG_TAIL_BYTES))
        lines = [line for line in log.read().decode(errors="replace").splitlines() if line.strip()]
    return "".join(f"\n  | {line}" for line in lines[-LOG_TAIL_LINES:])


def stop_process_group(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to the process group `process` leads, SIGKILL to whatever of it is still running after `grace_s`;
    returns once none of it runs (the leader reaped)."""
    group = process.pid  # started with start_new_session: its pid is the group's id
    _signal_group(group, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _group_running(group, process) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_group(group, signal.SIGKILL)
    process.wait()


def _signal_group(group: int, signum: signal.Signals) -> None:
    try:
        os.killpg(group, signum)
    except ProcessLookupError:  # the whole group has exited already
        pass


def _group_running(group: int, leader: subprocess.Popen) -> bool:
    """Whether a process of `group` still runs (zombies, exited but not yet reaped by their parent, do not)."""
    leader.poll()  # reaps the leader once it exits
    for candidate in psutil.process_iter(["status"]):
        try:
            if os.getpgid(candidate.pid) == group and candidate.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (OSError, psutil.Error):  # it exited while the list was read
            continue
    return False
