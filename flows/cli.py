"""The `chatgraft` command: run or serve the retrain flow, merge, evaluate, move the champion, open the MLflow UI."""
from __future__ import annotations

import getpass
import os
import signal
import subprocess
import sys
from contextlib import ExitStack, nullcontext
from functools import partial
from pathlib import Path

from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn, TextIO

import typer

from flows.environment import apply_offline_defaults

app = typer.Typer(help="chatgraft: continual pretraining + chat vector, as a tracked, reproducible pipeline.",
                  no_args_is_help=True, pretty_exceptions_enable=False)

apply_offline_defaults()


@app.callback()
def _every_command() -> None:
    # SIGTERM unwinds: half-written outputs are removed, `ui` stops its server in a `finally` (`run` sets its own)
    from pipelines.atomic import exit_cleanly_on_sigterm

    exit_cleanly_on_sigterm()

if TYPE_CHECKING:
    from flows.params_file import Overridden
    from flows.retrain import RetrainResult
    from pipelines.config import EvalParams, Params


@app.command()
def run(
    project_dir: Path = typer.Option(Path("."), help="project directory holding dvc.yaml and params.yaml"),
    set_: list[str] = typer.Option([], "--set", help="override a param, e.g. merge.ratios=[0.5,1.0]: written to "
                                   "params.yaml once the result is valid, its inputs usable and the project free (a "
                                   "refused or busy run leaves the file as it was); the run then reads it, and a run "
                                   "stopped after that keeps the new value, as `dvc exp run --set-param` does"),
    no_wait: bool = typer.Option(False, "--no-wait", help="refuse at once when another run is working in the "
                                 "project, instead of waiting up to flow.workspace_wait_seconds"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="stream every stage's output and Prefect's log "
                                 "here, instead of one line a stage (the output is in .chatgraft/logs either way)"),
) -> None:
    """Run the retrain flow: every stage through DVC, tracked in MLflow, winner registered and maybe promoted.

    Before Prefect starts: the overrides are validated and every input the params name is checked (exit 2), then
    the project is taken, or refused when another run holds it (exit 3). Shows one line a stage (reproduced or
    cached, time, headline metric) and the running stage's progress; each stage's output goes to
    .chatgraft/logs/<flow run>/<stage>.log and to its MLflow run. SIGTERM (what schedulers and Kubernetes send) and
    Ctrl-C end the run cleanly, in seconds: the running stage is stopped, its runs are marked failed, the run's slots
    and the project are released (exit 143, or 130). A run killed outright (SIGKILL, the OOM killer) leaves nothing
    running: its watchdog stops what it had started, and the next run reports it.
    """
    from flows.context import require_usable_inputs
    from flows.params_file import with_overrides
    from flows.watchdog import watchdog
    from flows.workspace import WorkspaceBusy, workspace_lock
    from pipelines.config import ParamsError

    try:
        wanted = with_overrides(project_dir / "params.yaml", set_)  # in memory: a refused run writes nothing
        wait = 0.0 if no_wait else wanted.params.flow.workspace_wait_seconds
        take = partial(workspace_lock, project_dir, "chatgraft run, starting its flow", wait,
                       partial(typer.echo, err=True))
        with ExitStack() as held:  # the project held before Prefect, DVC or a stage starts
            if no_wait:  # a busy project is refused at once, before the input check loads torch
                held.enter_context(take())
            require_usable_inputs(wanted.params, project_dir.resolve())
            if not no_wait:  # a bad input is refused before a wait
                held.enter_context(take())
            held.enter_context(watchdog(project_dir))
            _write_overrides(project_dir, set_, wanted)
            result = _retrain(project_dir, stage_logs=not verbose)
    except ParamsError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2)
    except WorkspaceBusy as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(3)
    except _Stopped as stopped:  # the project is released, the watchdog stood down
        _exit_at_once(stopped.signum)
    typer.echo("\n" + result.leaderboard)


def _write_overrides(project_dir: Path, overrides: list[str], wanted: Overridden) -> None:
    """Write the overridden params.yaml, the project held: checked again if the file changed while this run waited
    (a run before it wrote its own overrides, or a person edited it), so that no edit is undone unseen."""
    try:
        unchanged = (project_dir / "params.yaml").read_text() == wanted.before
    except OSError:
        unchanged = False  # checking again says why
    (wanted if unchanged else _check_inputs(project_dir, overrides)).write()


class _Stopped(Exception):
    """SIGTERM or Ctrl-C stopped the run; its flow has marked its runs ended and released what it held."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _retrain(project_dir: Path, stage_logs: bool) -> RetrainResult:
    """The retrain flow in the project this process holds, ended cleanly by SIGTERM or Ctrl-C (_Stopped); a busy
    slot is exit status 3, a failed stage 1."""
    from prefect.exceptions import TerminationSignal

    from flows.console import quiet_console, quiet_exit
    from flows.dvc_project import StageFailed
    from flows.retrain import retrain
    from flows.slots import SlotWaitTimeout

    stops: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stops.append(signum)
        # unwinds the flow: Prefect marks it Crashed, `finally` blocks release
        raise TerminationSignal(signum) if signum == signal.SIGTERM else KeyboardInterrupt

    for signum in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # a shell's background job ignores SIGINT: it still does
            signal.signal(signum, stop)
    _detach_temporary_server()
    try:
        with quiet_console() if stage_logs else nullcontext():  # its task-run lines stay in the API's log
            return retrain(project_dir=str(project_dir), stage_logs=stage_logs, workspace_held=True)
    except SlotWaitTimeout as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(3)
    except StageFailed as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1)
    except BaseException:
        if stops:  # the signal, or what Prefect made of it: a ValueError when it came as a task run began
            raise _Stopped(stops[0]) from None
        raise
    finally:
        if stage_logs:
            quiet_exit()  # the temporary server's stop, Prefect's services draining: after the run's last line


def _detach_temporary_server() -> None:
    """Make the temporary API server Prefect starts for the flow (the embedded default: no PREFECT_API_URL) start in
    a session of its own. In the run's process group, a signal sent to the group (Ctrl-C in a terminal, `kill -TERM
    -PGID`) stopped it with the run, which then spent minutes retrying to mark its flow run Crashed and to send its
    logs (each call tried 6 times, 2 to 32 s apart: 62-74 s), and left the flow run Running. The run stops it (at
    exit, or `_exit_at_once`); a killed run's watchdog does."""
    from unittest.mock import patch

    from prefect.server.api.server import SubprocessASGIServer

    class OwnSession(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen:
            with patch.object(subprocess, "Popen", partial(subprocess.Popen, start_new_session=True)):
                return super()._run_uvicorn_command()

    OwnSession()  # what Prefect's `SubprocessASGIServer()` returns: it keeps one per port, and both ask the default


def _exit_at_once(signum: int) -> NoReturn:
    """End a run that `signum` stopped, its runs marked: send the logs and events Prefect still queues (a few seconds
    at most), stop the temporary server, and exit 128 + signum without the interpreter's teardown, which waits for
    Prefect's queues without a limit and here took 2-4 s of CPU collecting what the run had loaded."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    for repeated in (signal.SIGTERM, signal.SIGINT):  # the run is ending already: a second one would cut it short
        signal.signal(repeated, signal.SIG_IGN)
    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=5)
    SubprocessASGIServer().stop()  # none started (a Prefect server named by PREFECT_API_URL): nothing to do
    typer.echo(f"stopped by {signal.Signals(signum).name}", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + signum)


def _check_inputs(project_dir: Path, overrides: list[str] | None = None) -> Overridden:
    """params.yaml with `overrides` applied in memory, validated, and every input it names usable (ParamsError
    otherwise); nothing is written."""
    from flows.params_file import with_overrides

    wanted = with_overrides(project_dir / "params.yaml", overrides or [])  # a typo is answered before MLflow loads
    from flows.context import require_usable_inputs

    require_usable_inputs(wanted.params, project_dir.resolve())
    return wanted


@app.command()
def check(
    project_dir: Path = typer.Option(Path("."), help="project directory holding params.yaml"),
) -> None:
    """Check params.yaml and every input it names (model folders, eval and SFT sets, the inbox) without running,
    and the CP setup against this machine (FSDP needs CUDA; processes per GPU, or per CPU core; memory); with a
    real base/chat pair, say what the merge will reconcile and what CP will need in memory. Exit 2 on a problem.
    With data.source documents, warn about settings still sized for the tiny world."""
    from flows.params_file import with_overrides
    from pipelines.config import ParamsError
    from pipelines.preflight import tiny_world_warnings

    try:
        params = with_overrides(project_dir / "params.yaml", []).params
    except ParamsError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2)
    problems = _input_refusal(params, project_dir)
    per_process = None if problems else _describe_pair(params, project_dir)
    problems += _machine_refusal(params, per_process)
    for warning in tiny_world_warnings(params):
        typer.echo(f"warning: {warning}", err=True)
    if problems:
        typer.echo("\n".join(problems), err=True)
        raise typer.Exit(2)
    typer.echo(f"{project_dir / 'params.yaml'}: valid, and every input it names is usable; "
               "this machine can run its CP setup")


def _input_refusal(params: Params, project_dir: Path) -> list[str]:
    """What `chatgraft run` would refuse in the inputs `params` name, as one message (none: all usable)."""
    from flows.context import require_usable_inputs
    from pipelines.config import ParamsError

    try:
        require_usable_inputs(params, project_dir.resolve())
    except ParamsError as error:
        return [str(error)]
    return []


def _describe_pair(params: Params, project_dir: Path) -> int | None:
    """With a real base/chat pair: print what the merge will reconcile and CP's memory estimate; return that
    estimate (bytes per process). None for the tiny pair, which the run builds."""
    from pipelines.upstream.pair_check import check_pair

    if not (params.upstream.base_path and params.upstream.chat_path):
        return None
    pair = {role: project_dir / getattr(params.upstream, f"{role}_path") for role in ("base", "chat")}
    typer.echo("\n".join(check_pair(pair).summary()))
    text, per_process = _memory_estimate(params, pair["base"])
    typer.echo(text)
    return per_process


def _machine_refusal(params: Params, per_process: int | None) -> list[str]:
    """What in the CP setup this machine cannot run, as one message (none: it can)."""
    from pipelines.preflight import cp_setup_problems, this_machine

    machine = this_machine()
    problems = cp_setup_problems(params.cp, machine, per_process)
    return ["\n  ".join([f"a CP setup this machine ({machine}) cannot run", *problems])] if problems else []


@app.command()
def merge(
    base: Path = typer.Option(..., help="base model directory (the one chat was tuned from)"),
    chat: Path = typer.Option(..., help="chat model directory"),
    cp: Path = typer.Option(..., help="continually pretrained model directory (full weights or a peft adapter)"),
    out: Path = typer.Option(..., help="output directory: new, empty, or a previous merge's, which is replaced "
                             "atomically when the merge succeeds"),
    ratio: float = typer.Option(1.0, help="weight of the chat vector (chat - base)"),
    config: Path | None = typer.Option(None, help="merge.yaml with the keys of params.yaml's merge section"),
    report: Path | None = typer.Option(None, help="per-tensor report json (default: <out>.merge-report.json)"),
    allow_pickle: bool = typer.Option(False, help="read pickle (.bin) checkpoints; only for files you trust"),
    overwrite: bool = typer.Option(False, help="replace OUT even if it holds files no merge wrote (they are lost)"),
) -> None:
    """Merge only: write CP + ratio * (chat - base) as a Hugging Face chat model."""
    from pipelines.config import MergeSettings, ParamsError, load_merge_settings
    from pipelines.merge.chat_vector import merge_chat_vector

    try:
        settings = load_merge_settings(config) if config else MergeSettings()
        if allow_pickle:
            settings = settings.model_copy(update={"allow_pickle": True})
        report_path = report or out.with_name(f"{out.name}.merge-report.json")
        result = merge_chat_vector(base=base, chat=chat, cp=cp, out=out, ratio=ratio, settings=settings,
                                   report_path=report_path, overwrite=overwrite)
    except (ParamsError, ValueError, OSError) as error:  # CheckpointError: ValueError; OutputExistsError: OSError
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1)
    typer.echo(f"wrote {out} ({len(result.files)} file(s), {len(result.tensors)} tensors); report {report_path}")


@app.command()
def evaluate(
    model: Path = typer.Option(..., help="model folder to score: a chatgraft merge output, a hub checkpoint"),
    chat: Path | None = typer.Option(None, help="chat model whose template and end-of-turn ids are used when MODEL "
                                     "has no chat template (default: MODEL itself)"),
    project_dir: Path = typer.Option(Path("."), help="project whose params.yaml `eval` section is used"),
    corpus: Path | None = typer.Option(None, help="folder with the held-out text (valid.jsonl) and default eval "
                                       "sets (default: the project's data/corpus)"),
    instruction: Path | None = typer.Option(None, help="instruction set jsonl (default: eval.sets.instruction)"),
    multiturn: Path | None = typer.Option(None, help="multi-turn set jsonl (default: eval.sets.multiturn)"),
    safety: Path | None = typer.Option(None, help="safety set jsonl (default: eval.sets.safety)"),
    out: Path = typer.Option(Path("reports/evaluate"), help="folder for <model name>.json (metrics) and "
                             "<model name>.samples.jsonl (every answer)"),
) -> None:
    """Score any model folder on the evaluation suites the flow uses, and print the scores.

    Every file it will read (the model folders, the sets, the corpus folder's held-out text and target language)
    is read first: a problem refuses the command before any model is loaded (exit 2), naming the file and the
    option or setting that fixes it. Relative paths in params.yaml are read from the project."""
    from pipelines.config import ParamsError
    from pipelines.evaluate.stage import evaluate_candidate

    corpus_dir = corpus or project_dir / "data" / "corpus"
    try:
        params = _eval_params(project_dir, {"instruction": instruction, "multiturn": multiturn, "safety": safety})
        _require_evaluation_inputs(model, chat, params, corpus_dir)
    except ParamsError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2)
    try:
        result = evaluate_candidate(model_dir=model, chat_dir=chat or model, corpus_dir=corpus_dir, params=params,
                                    metrics_path=out / f"{model.name}.json",
                                    samples_path=out / f"{model.name}.samples.jsonl")
    except (ValueError, OSError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1)
    width = max(map(len, result.metrics))
    typer.echo("\n".join(f"{name:<{width}}  {value:.4f}" for name, value in sorted(result.metrics.items())))
    typer.echo(f"{result.answers_per_second:.1f} answers a second")
    typer.echo(f"metrics: {out / f'{model.name}.json'}; answers: {out / f'{model.name}.samples.jsonl'}")


def _eval_params(project_dir: Path, given: dict[str, Path | None]) -> EvalParams:
    """The project's `eval` section with its relative paths read from the project, as its stages read them, and
    the sets `given` on the command line instead of its own."""
    from pipelines.config import load_params

    params = load_params(project_dir / "params.yaml").eval

    def in_project(path: str | None) -> str | None:
        return str(project_dir / path) if path else None  # an absolute path stays itself

    sets = {suite: str(path) if path else in_project(getattr(params.sets, suite)) for suite, path in given.items()}
    return params.model_copy(update={"sets": params.sets.model_copy(update=sets),
                                     "refusal_classifier": in_project(params.refusal_classifier),
                                     "lm_eval_include_path": in_project(params.lm_eval_include_path)})


EVAL_FIXES = {**{f"eval.sets.{suite}": f"--{suite} FILE (or eval.sets.{suite})"
                 for suite in ("instruction", "multiturn", "safety")},
              "eval.language_scripts": "set eval.language_scripts (the target language's scripts, e.g. [Hangul])"}


def _require_evaluation_inputs(model: Path, chat: Path | None, params: EvalParams, corpus_dir: Path) -> None:
    """Raise ParamsError listing every file `evaluate` would fail on, each read before any model is loaded: the
    model folders, and what the evaluation reads (`eval_inputs`) with the option or setting that fixes it."""
    from pipelines.config import ParamsError
    from pipelines.evaluate.inputs import eval_input_problems, eval_inputs
    from pipelines.model_folder import check_model_folder

    problems = []
    for option, folder in (("--model", model), ("--chat", chat)):
        try:
            if folder:
                check_model_folder(folder)
        except (ValueError, OSError) as error:  # CheckpointError is a ValueError
            problems.append(f"{option}: {error}")
    corpus_fix = f"--corpus DIR, a folder the corpus stage wrote (now {corpus_dir})"
    problems += eval_input_problems(eval_inputs(params, corpus_dir), corpus_fix, EVAL_FIXES)
    if problems:
        raise ParamsError("\n  ".join(["chatgraft evaluate: inputs it cannot use (no model loaded, nothing "
                                       "generated)", *problems]))


@app.command()
def serve(
    project_dir: Path = typer.Option(Path("."), help="project directory holding prefect.yaml, dvc.yaml, params.yaml"),
) -> None:
    """Serve prefect.yaml's deployments here: `retrain` on its cron schedule, `check-champion` whenever champion
    moves, and either when started. Needs a Prefect server (PREFECT_API_URL): schedules and triggers live there."""
    from prefect.settings import PREFECT_API_URL

    from flows.schedule import serve_deployments

    if not PREFECT_API_URL.value():
        typer.echo("error: chatgraft serve needs a Prefect server for its schedule and triggers: set PREFECT_API_URL "
                   "(e.g. `prefect server start`, then PREFECT_API_URL=http://127.0.0.1:4200/api)", err=True)
        raise typer.Exit(2)
    serve_deployments(project_dir)


@app.command()
def intake(
    project_dir: Path = typer.Option(Path("."), help="project directory holding params.yaml"),
) -> None:
    """Take new corpus files from `flow.inbox` into data/incoming and record them as the inbox stage's output
    (the flow's first task).

    Exits 1 when a file was refused (an unsafe name, a link out of the inbox, no readable documents); the
    files that could be taken are taken, and reports/intake.json lists every refusal. Refuses (exit 3) while a run
    holds the project: it reads data/incoming."""
    import logging

    from flows.dvc_project import DvcProject
    from flows.inbox import intake_inbox
    from flows.workspace import WorkspaceBusy, workspace_lock
    from pipelines.config import load_params

    root = project_dir.resolve()
    inbox = load_params(root / "params.yaml").flow.inbox
    try:
        with workspace_lock(root, "chatgraft intake", 0, partial(typer.echo, err=True)):
            intake_, _ = intake_inbox(DvcProject(root), inbox, logging.getLogger("chatgraft.intake"))
    except WorkspaceBusy as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(3)
    typer.echo(f"{len(intake_.taken)} new file(s) in data/incoming; left in the inbox: {intake_.skipped or 'none'}")
    for name, reason in intake_.refused.items():
        typer.echo(f"refused: {name!r}: {reason}", err=True)
    if intake_.refused:
        raise typer.Exit(1)


def _registry(project_dir: Path) -> tuple:
    from flows.context import open_registry

    params, store = open_registry(project_dir)
    return store, params.promote.registered_model, params.flow.slot_wait_seconds


def _person(command: str) -> str:
    return f"{getpass.getuser()} (chatgraft {command})"


def _moved(action: Callable[[], str]) -> None:
    from mlflow.exceptions import MlflowException

    from flows.console import quiet_exit
    from flows.promotion import PromotionError
    from flows.promotion_lock import SlotWaitTimeout

    quiet_exit()
    try:
        typer.echo(action())
    except (PromotionError, MlflowException, SlotWaitTimeout) as error:
        typer.echo(f"error: {getattr(error, 'message', error)}", err=True)
        raise typer.Exit(1)


@app.command()
def promote(
    version: str = typer.Argument(help="model version to make champion"),
    reason: str = typer.Option("promoted by hand", help="why: recorded on the version"),
    project_dir: Path = typer.Option(Path("."), help="project directory holding params.yaml"),
) -> None:
    """Make VERSION the champion now, whatever the policy says (recorded with your user name)."""
    from flows.promotion import promote_by_hand

    store, model, wait = _registry(project_dir)
    _moved(lambda: "{} champion: version {} -> {}".format(
        model, promote_by_hand(store, model, version, _person("promote"), reason, wait) or "none", version))


@app.command()
def rollback(
    project_dir: Path = typer.Option(Path("."), help="project directory holding params.yaml"),
) -> None:
    """Give champion back to the version that held it before the current one."""
    from flows.promotion import rollback as roll_back

    store, model, wait = _registry(project_dir)
    _moved(lambda: "{} champion: version {} -> {}".format(model, *roll_back(store, model, _person("rollback"), wait)))


@app.command()
def pin(
    version: str = typer.Argument(help="model version"),
    off: bool = typer.Option(False, "--off", help="unpin instead"),
    project_dir: Path = typer.Option(Path("."), help="project directory holding params.yaml"),
) -> None:
    """Pin VERSION (tag pinned=true): while it is champion, the policy never moves champion away from it."""
    from flows.promotion import set_pinned

    store, model, _ = _registry(project_dir)

    def action() -> str:
        set_pinned(store, model, version, not off)
        return f"{model} version {version}: pinned={str(not off).lower()}"
    _moved(action)


@app.command()
def history(
    project_dir: Path = typer.Option(Path("."), help="project directory holding params.yaml"),
) -> None:
    """Every decision about champion, oldest first: who moved it from which version to which, and why."""
    from flows.tracking.history import read

    store, model, _ = _registry(project_dir)
    entries = read(store, model)
    if not entries:
        typer.echo(f"{model}: no promotion decision recorded yet")
        return
    rows = [("when (UTC)", "decision", "from", "to", "actor", "why")]
    rows += [(e.at, e.decision, e.from_version, e.to_version, e.actor, e.reasons) for e in entries]
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    typer.echo("\n".join("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[5]])
                         for row in rows))


@app.command()
def status(
    project_dir: Path = typer.Option(Path("."), help="project directory holding params.yaml"),
) -> None:
    """The registry at a glance: every version with its aliases, pin, latest decision and primary metric, and
    where the champion came from; then whether the workspace holds outputs no stage declares (`chatgraft clean`)."""
    from flows.context import open_registry
    from flows.registry_view import registry_overview
    from flows.stale_outputs import recorded_note

    known, note = recorded_note(project_dir.resolve())
    # else DVC's graph is read in a process of its own, on another core while this one reads the registry (each ~3 s)
    workspace = subprocess.Popen([sys.executable, "-m", "flows.stale_outputs", str(project_dir.resolve())],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) \
        if not known and (project_dir / "dvc.yaml").exists() else None
    try:
        params, store = open_registry(project_dir)
        typer.echo(registry_overview(store, params.promote.registered_model, params.promote.primary_metric))
        if workspace is not None:
            note = workspace.communicate()[0].strip()
        if note:
            typer.echo(f"\nworkspace: {note}")
    finally:
        if workspace is not None and workspace.poll() is None:
            workspace.kill()


@app.command()
def clean(
    project_dir: Path = typer.Option(Path("."), help="project directory holding dvc.yaml"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list what would be removed, with sizes; remove nothing"),
) -> None:
    """Remove the outputs of stages dvc.yaml no longer has (a dropped merge ratio or align method: its model,
    scores and reports), naming each with its size and how to get it back; nothing reruns for it. Models are
    removed only when DVC's cache holds them. Refuses while a run holds the project."""
    from flows.dvc_project import DvcProject
    from flows.stale_outputs import clean_stale_outputs, describe_cleaning
    from flows.workspace import WorkspaceBusy, workspace_lock

    root = project_dir.resolve()
    try:
        with workspace_lock(root, "chatgraft clean", 0, partial(typer.echo, err=True)):
            cleaning = clean_stale_outputs(DvcProject(root), dry_run)
    except WorkspaceBusy as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(3)
    typer.echo(describe_cleaning(cleaning, dry_run))


RECEIVER_PORT = 5110  # `chatgraft watch`'s: not MLflow's (5000, the UI's), Prefect's (4200), nor `models serve`'s


@app.command()
def ui(
    project_dir: Path = typer.Option(Path("."), help="project directory holding the embedded store"),
    port: int = typer.Option(5000, help="port of the UI"),
    host: str = typer.Option("127.0.0.1", help="interface to listen on"),
    watch_port: int = typer.Option(RECEIVER_PORT, help="port of the receiver of champion moves made in the UI"),
    no_watch: bool = typer.Option(False, "--no-watch", help="start the UI alone: moves made in it are recorded only "
                                  "when the next chatgraft move finds them"),
) -> None:
    """Open the MLflow UI on the project's store (MLFLOW_TRACKING_URI when set, else the embedded sqlite one), with
    `chatgraft watch` beside it: champion moves made in the UI are recorded, and guarded (promote.ui_moves).
    Prints where both listen; their own lines (each request, each move heard) go to .chatgraft/logs/ui.log.
    SIGINT (Ctrl-C) or SIGTERM stops both."""
    from flows.console import LOGS, divert_output, say
    from flows.promotion_lock import LOCK_ENV, announce_served_store, lock_file
    from flows.tracking.relocation import relocate
    from flows.tracking.store import embedded_uri, tracking_uri
    from flows.tracking.webhooks import project_keys, server_environment
    from flows.watch import WatchError, local_address, require_free_port, webhook_url

    root = project_dir.resolve()
    uri = tracking_uri(root)
    watching = not (no_watch or uri.startswith("http"))  # a server of one's own delivers to a `watch` of one's own
    try:
        require_free_port(host, port, "--port")
        if watching:
            require_free_port(host, watch_port, "--watch-port")
    except WatchError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2)
    if uri == embedded_uri(root):
        relocate(root)  # a moved or copied project: the UI must show, and write to, this folder's artifacts
    log = root / LOGS / "ui.log"
    terminal = divert_output(log)  # MLflow's and uvicorn's lines, and what the servers print as they stop
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--registry-store-uri", uri,
               "--host", host, "--port", str(port), "--workers", "1"]  # one delivery queue: moves heard in order
    if uri.startswith("sqlite:"):
        command += ["--default-artifact-root", (root / "mlflow" / "artifacts").as_uri()]
    server = subprocess.Popen(command, env={**os.environ, **server_environment(project_keys(root))},
                              start_new_session=True)  # its own group: its workers are stopped with it
    url, served = local_address(host, port), None
    try:
        _wait_for_server(server, url, terminal, log)
        say(f"MLflow UI   {url}", terminal)
        if watching:
            say(f"receiver    {webhook_url(host, watch_port)} (champion moves made in the UI)", terminal)
        say(f"log         {log}\nCtrl-C stops {'both' if watching else 'it'}", terminal)
        if not watching:
            raise typer.Exit(server.wait())
        if (lock := lock_file(uri)) is not None:  # the watcher reaches the local store through the UI's server
            os.environ[LOCK_ENV] = str(lock)
            served = announce_served_store(url, lock)  # and so does a person's command given the UI's address
        os.environ["MLFLOW_TRACKING_URI"] = url
        _watch(root, host, watch_port, None, terminal)
    except KeyboardInterrupt:  # Ctrl-C: the receiver has shut down
        raise typer.Exit(128 + signal.SIGINT) from None
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):  # stopping already: a second signal would leave the UI up
            signal.signal(signum, signal.SIG_IGN)
        if served is not None:
            served.unlink(missing_ok=True)
        _stop_group(server)


def _wait_for_server(server: subprocess.Popen, url: str, terminal: TextIO, log: Path, seconds: float = 120) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while server.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    typer.echo(f"error: the MLflow UI at {url} did not start (exit status {server.poll()}): see {log}", file=terminal)
    raise typer.Exit(1)


def _stop_group(process: subprocess.Popen, grace_seconds: float = 10) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@app.command()
def watch(
    project_dir: Path = typer.Option(Path("."), help="project directory holding params.yaml"),
    port: int = typer.Option(RECEIVER_PORT, help="port to hear MLflow's webhooks on"),
    host: str = typer.Option("127.0.0.1", help="interface to listen on"),
    url: str | None = typer.Option(None, help="address MLflow delivers to (default: http://HOST:PORT/mlflow-webhook)"),
) -> None:
    """Hear champion moves made in the MLflow UI (webhooks of the server MLFLOW_TRACKING_URI names): record each in
    the promotion history and, under promote.ui_moves: guard, undo one that breaks the policy. `chatgraft ui`
    starts one beside the UI."""
    _watch(project_dir.resolve(), host, port, url)


def _watch(root: Path, host: str, port: int, url: str | None, terminal: TextIO | None = None) -> None:
    """Serve the receiver until SIGINT or SIGTERM; an error that stops it is said on `terminal` (stderr if none)."""
    from mlflow.exceptions import MlflowException

    from flows.watch import WatchError, serve_watch
    from pipelines.config import ParamsError

    try:
        serve_watch(root, host, port, url)
    except (WatchError, ParamsError, MlflowException) as error:
        typer.echo(f"error: {getattr(error, 'message', error)}", file=terminal, err=terminal is None)
        raise typer.Exit(2)


@app.command()
def runs(
    project_dir: Path = typer.Option(Path("."), help="project directory holding params.yaml"),
) -> None:
    """Every run of the project (its DVC experiments), oldest first, in 120 columns: when, the winner and its
    primary metric, and the params that differ from params.yaml now."""
    from dvc.exceptions import DvcException

    from flows.dvc_project import DvcProject
    from flows.runs_view import runs_table

    try:
        typer.echo(runs_table(*DvcProject(project_dir.resolve()).experiments()))
    except DvcException as error:
        typer.echo(f"error: {project_dir}: {error}", err=True)
        raise typer.Exit(2)


@app.command()
def memory(
    params_file: Path = typer.Option(Path("params.yaml"), "--params", help="params file whose `cp` section is used",
                                     exists=True),
    model_config: Path | None = typer.Option(None, help="config.json (or its folder) of the model to train; "
                                             "default: upstream.base_path, else the project's tiny base"),
) -> None:
    """Estimate the accelerator memory a CP run needs per process, from the model's config (no weights loaded)."""
    from pipelines.config import ParamsError, load_params

    try:
        params = load_params(params_file)
    except ParamsError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2)
    source = model_config or Path(params.upstream.base_path or params_file.parent / "models" / "upstream" / "base")
    if not (source / "config.json" if source.is_dir() else source).exists():
        typer.echo(f"{source}: no model config.json (pass --model-config, or run the upstream stage)", err=True)
        raise typer.Exit(2)
    typer.echo(_memory_estimate(params, source)[0])


def _memory_estimate(params: "Params", source: Path) -> tuple[str, int]:
    """CP's memory per process on the model of `source` (a config.json or its folder): as printed, and in bytes."""
    from transformers import AutoConfig

    from pipelines.training.memory import estimate_cp_memory

    config = AutoConfig.from_pretrained(source.parent if source.name == "config.json" else source)
    estimate = estimate_cp_memory(config, params.cp)
    mode = "LoRA" if params.cp.lora else "full"
    distributed = params.cp.distributed
    return (f"{config.model_type}, {mode} fine-tuning, {distributed.nproc_per_node} process(es) "
            f"({distributed.strategy}), {params.cp.batch_size} x {params.cp.block_size} tokens a step:\n"
            f"{estimate.table()}"), estimate.total


def main() -> None:
    """The `chatgraft` command: an invalid params.yaml is said in a few lines naming the file and the keys at fault
    (exit 2), whichever command read it, never as a traceback."""
    try:
        app(prog_name="chatgraft")
    except Exception as error:
        from pipelines.config import ParamsError  # pydantic's import, paid only on an error

        if not isinstance(error, ParamsError):
            raise
        typer.echo(f"error: {error}", err=True)
        raise SystemExit(2) from None

