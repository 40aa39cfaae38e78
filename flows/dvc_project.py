"""The one place that runs DVC: reproduce a stage, read what it declares and what dvc.lock recorded, push."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, chdir, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import networkx as nx
import psutil
import yaml
from dvc import stage as dvc_stage
from dvc.dvcfile import PROJECT_FILE, load_file
from dvc.repo import Repo
from dvc.utils.flatten import flatten
from dvc_data.hashfile.build import build
from dvc_data.hashfile.tree import Tree

from flows.console import last_lines
from flows.processes import stop_processes
from pipelines.cli import USER_ERROR

LOCKED = "Unable to acquire lock"  # what DVC prints when another DVC process holds the repository
STOP_SECONDS = 10
# Repo() resolves paths against the working directory, which is the process's: one in-process Repo at a time
_IN_PROCESS = threading.RLock()


class StageFailed(RuntimeError):
    """`dvc repro` of a stage failed; the message carries the end of its output."""


class DvcLocked(StageFailed):
    """Another DVC process holds the repository's lock: not a service error, so not retried."""


def _stop_tree(process: subprocess.Popen) -> None:
    """SIGTERM the dvc process and every process under it (the stage's), SIGKILL what is left after STOP_SECONDS."""
    with suppress(psutil.NoSuchProcess):
        dvc = psutil.Process(process.pid)
        stop_processes([*dvc.children(recursive=True), dvc], STOP_SECONDS)
    process.wait()


@dataclass(frozen=True)
class PipelineStage:
    """A (resolved) stage of dvc.yaml: its name, whether it holds a `gpu` slot, the stages whose outputs it
    reads (DVC's graph: it runs after them, and beside any stage that is neither above nor below it), and the
    outputs it declares (relative to the root)."""

    name: str
    gpu: bool
    after: tuple[str, ...] = ()
    outs: tuple[Path, ...] = ()


@dataclass(frozen=True)
class StageSpec:
    """What dvc.yaml declares for one (resolved) stage."""

    name: str
    param_keys: list[str]
    metrics: list[Path]
    plots: list[Path]
    files: list[Path]
    dirs: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class Experiment:
    """A saved DVC experiment (or the workspace): its params.yaml flattened to dotted keys, and the content of each
    metrics file it holds."""

    name: str
    created: datetime | None
    params: dict[str, Any]
    metrics: dict[str, dict[str, Any]]


def _experiment(name: str, data: Any) -> Experiment:
    """An Experiment from DVC's serialized experiment data (files DVC could not read are left out)."""
    return Experiment(name, data.timestamp, flatten(data.params.get("params.yaml", {}).get("data") or {}),
                      {path: result["data"] for path, result in data.metrics.items() if "data" in result})


@dataclass(frozen=True)
class OutputTemplate:
    """An output of a `foreach` or `matrix` stage of dvc.yaml as written, before its item is filled in
    (`models/merged/alpha-${item}`), and whether DVC caches what it names."""

    path: str
    cached: bool


@dataclass(frozen=True)
class OutputNames:
    """The outputs dvc.yaml declares (foreach expanded), and the names its `foreach`/`matrix` outputs take."""

    declared: set[Path]
    templates: list[OutputTemplate]


def _templates(stage_definition: dict) -> Iterator[OutputTemplate]:
    """The outputs, metrics and plots a stage definition names, each a path or a one-key map of path to options."""
    for kind in ("outs", "metrics", "plots"):
        for entry in stage_definition.get(kind) or []:
            path, options = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
            yield OutputTemplate(path, (options or {}).get("cache", True))


def _user_error(output: str) -> str | None:
    """The error in the user's input a stage command ended with (its marked line), if it did."""
    marked = [line for line in output.splitlines() if line.startswith(USER_ERROR)]
    return marked[-1].removeprefix(USER_ERROR) if marked else None


class DvcProject:
    """A DVC project rooted at `root`; each command runs in a fresh `dvc` process or a short-lived Repo.

    `wait_for_lock`: wait for DVC's repository lock instead of failing when another DVC process holds it (stages
    reproduced side by side each take it to start and to record their outputs; DVC releases it while a stage's
    command runs and guards the paths with its read/write locks). Without it, a `dvc` run by hand that holds the
    lock is an error at once."""

    def __init__(self, root: Path, wait_for_lock: bool = False) -> None:
        self.root = root
        self.wait_for_lock = wait_for_lock

    def _dvc(self, *args: str, env: dict[str, str] | None = None, stream: bool = False,
             log: Path | None = None) -> str:
        """Run a dvc command; `stream` shows its output (the stage's progress bars) as it runs, `log` writes it
        there instead (a failure then quotes its last lines and names the file)."""
        # Stage commands say `python`: it must be this interpreter, with the project installed.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        with ExitStack() as files:
            output = files.enter_context(log.open("w")) if log else None
            # in this process's group: a kill of the group (an OOM kill, kill -9 -PGID, a pod's end) ends the stage
            # too, never leaving it running unseen with DVC's lock; when only this process is told to stop, it
            # stops the tree
            waits = ["--wait-for-lock"] if self.wait_for_lock else []
            process = subprocess.Popen(
                [sys.executable, "-m", "dvc", *waits, *args], cwd=self.root, env={**os.environ, "PATH": path, **(env or {})},
                stdout=output or (None if stream else subprocess.PIPE),
                stderr=subprocess.STDOUT if output else (None if stream else subprocess.PIPE), text=True,
            )
            try:
                stdout, stderr = process.communicate()
            except BaseException:
                _stop_tree(process)
                raise
        result = subprocess.CompletedProcess(process.args, process.returncode, stdout or "", stderr or "")
        if log:
            result.stdout = log.read_text(errors="replace")
        if result.returncode != 0 and LOCKED in result.stdout + result.stderr:
            raise DvcLocked(f"`dvc {' '.join(args)}` in {self.root}: another DVC command holds the "
                                  "repository's lock (a `dvc` run by hand?)")
        if result.returncode != 0 and (problem := _user_error(result.stdout + result.stderr)):
            raise StageFailed(f"`dvc {' '.join(args)}`: {problem}" + (f"\n(the whole output: {log})" if log else ""))
        if result.returncode != 0:
            output_text = f"{last_lines(log)}\n(the whole output: {log})" if log else "(its output is above)" if \
                stream else "\n".join((result.stdout + result.stderr).splitlines()[-40:])
            raise StageFailed(f"`dvc {' '.join(args)}` failed in {self.root} (exit {result.returncode}):\n"
                              f"{output_text}")
        return result.stdout or ""

    @contextmanager
    def _repo(self) -> Iterator[Repo]:
        # DVC resolves stage paths against the working directory, not the repo root it was given.
        with _IN_PROCESS, chdir(self.root), Repo(".", _wait_for_lock=self.wait_for_lock) as repo:
            yield repo

    def link_types(self) -> str:
        """How DVC puts cached files in the workspace (cache.type, in the order it tries them), as the project's
        config sets it; `reflink,copy` (DVC's default) where it sets none."""
        with self._repo() as repo:
            return ",".join(repo.config["cache"].get("type") or ["reflink", "copy"])

    def stages(self) -> list[PipelineStage]:
        """Every stage of dvc.yaml (foreach expanded) in the order the flow runs them one at a time: the file's
        order, but where DVC's graph puts a stage after one written below it."""
        with self._repo() as repo:
            graph = repo.index.graph  # an edge from each stage to the stage whose output it reads
            order = {stage: index for index, stage in enumerate(repo.index.stages)}
            sorted_stages = nx.lexicographical_topological_sort(graph.reverse(copy=False), key=order.__getitem__)
            return [PipelineStage(stage.addressing, bool((stage.meta or {}).get("gpu")),
                                  tuple(dep.addressing for dep in graph.successors(stage)
                                        if isinstance(dep, dvc_stage.PipelineStage)),
                                  tuple(Path(out.def_path) for out in stage.outs))
                    for stage in sorted_stages if isinstance(stage, dvc_stage.PipelineStage)]

    def declared_outputs(self) -> list[Path]:
        """Every output path dvc.yaml declares (foreach expanded), relative to the root."""
        with self._repo() as repo:
            return sorted({Path(out.def_path) for stage in repo.index.stages for out in stage.outs})

    def is_up_to_date(self, stage: str) -> bool:
        """True when dvc.lock matches the stage's deps, params and outs, so `repro` would skip it."""
        with self._repo() as repo:
            return not repo.status(targets=[stage])

    def reproduce(self, stage: str, env: dict[str, str] | None = None, log: Path | None = None) -> None:
        """Run `dvc repro --single-item` for one stage, its output shown as it runs, or written to `log`."""
        self._dvc("repro", "--single-item", stage, env=env, stream=log is None, log=log)

    def spec(self, stage: str) -> StageSpec:
        """The params, metrics, plots and other outputs the stage declares in dvc.yaml."""
        with self._repo() as repo:
            (resolved,) = repo.stage.collect(stage)
            param_keys = [key for dep in resolved.deps if hasattr(dep, "params") for key in dep.params]
            outs = [(Path(out.def_path), out) for out in resolved.outs]
        is_dir = lambda path: (self.root / path).is_dir()  # noqa: E731
        return StageSpec(
            name=stage,
            param_keys=param_keys,
            metrics=[p for p, out in outs if out.metric],
            plots=[p for p, out in outs if out.plot],
            files=[p for p, out in outs if not (out.metric or out.plot) and not is_dir(p)],
            dirs=[p for p, out in outs if is_dir(p)],
        )

    def locked_stages(self) -> dict[str, dict]:
        """dvc.lock's entry of every stage it records: cmd, deps and outs with their md5s, params with values."""
        lock_path = self.root / "dvc.lock"
        with self._repo() as repo, repo.lock:  # DVC rewrites dvc.lock in place, holding this lock
            text = lock_path.read_text() if lock_path.exists() else ""
        return (yaml.safe_load(text) or {}).get("stages", {})

    def lock_hashes(self, stage: str) -> dict[str, str]:
        """`path -> md5` of the stage's deps and outs as dvc.lock recorded them."""
        entry = self.locked_stages().get(stage, {})
        return {item["path"]: item["md5"] for kind in ("deps", "outs") for item in entry.get(kind, []) if "md5" in item}

    def output_hash(self, path: str) -> str | None:
        """The dvc.lock md5 of the output that is `path` or contains it."""
        for entry in self.locked_stages().values():
            for out in entry.get("outs", []):
                if path == out["path"] or path.startswith(out["path"].rstrip("/") + "/"):
                    return out.get("md5")
        return None

    def commit(self, stage: str) -> None:
        """Record a stage's outputs as they are now in dvc.lock and the cache (`dvc commit`), without running it."""
        self._dvc("commit", "--force", stage)  # not --quiet: it would silence the error too

    def set_local_remote(self, name: str, url: str, endpoint_url: str) -> None:
        """Make `name` (an S3 `url` at `endpoint_url`) this clone's default remote, in git-ignored .dvc/config.local."""
        self._dvc("remote", "add", "--local", "--default", "--force", name, url)
        self._dvc("remote", "modify", "--local", name, "endpointurl", endpoint_url)

    def remove_local_remote(self, name: str) -> None:
        """Forget the remote `name` set by `set_local_remote`; nothing to do when there is none."""
        try:
            self._dvc("remote", "remove", "--local", name)
        except StageFailed:
            pass

    def _imported_url(self, dvc_file: Path) -> str | None:
        """The source an import's .dvc file records, as written there; None when there is no such import."""
        if not dvc_file.exists():
            return None
        deps = (yaml.safe_load(dvc_file.read_text()) or {}).get("deps") or [{}]
        return deps[0].get("path")

    def import_url(self, url: str, out: Path) -> str | None:
        """Track the folder or S3 prefix `url` as `out` (a path under the root): `dvc import-url` the first time (or
        when `url` changed), else `dvc update`, which downloads only when the source changed. Returns the md5 of
        what is imported now. S3 credentials and endpoint come from the environment (AWS_*), as boto3 reads them."""
        dvc_file = out.with_name(out.name + ".dvc")
        recorded = self._imported_url(dvc_file)
        local = "://" not in url
        same = recorded is not None and (
            (dvc_file.parent / recorded).resolve() == (self.root / url).resolve() if local else recorded == url)
        relative = str(out.relative_to(self.root))
        if same:
            self._dvc("update", "--quiet", str(dvc_file.relative_to(self.root)))
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            self._dvc("import-url", "--force", "--quiet", str(self.root / url) if local else url, relative)
        outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
        return outs[0].get("md5")

    def uncached_outputs(self) -> list[str]:
        """The stages' outputs DVC leaves to git (`cache: false`: metrics, plots, reports) that exist now, but those
        git ignores (resume checkpoints)."""
        with self._repo() as repo:
            paths = {out.def_path for stage in repo.index.stages for out in stage.outs if not out.use_cache}
            return sorted(path for path in paths if (self.root / path).exists() and not repo.scm.is_ignored(path))

    def save_experiment(self, name: str) -> None:
        """Save the workspace as DVC experiment `name` (`dvc exp save`, replacing one of that name): a commit under
        refs/exps holding dvc.lock, params.yaml and the uncached outputs, so `dvc exp show` and `dvc exp diff`
        compare runs; the branch, HEAD and index stay as they were."""
        untracked = (f"--include-untracked={path}" for path in self.uncached_outputs())
        self._dvc("exp", "save", "--force", "--name", name, *untracked)

    def push(self) -> str:
        """Push every cached output to the default remote."""
        return self._dvc("push")

    def output_names(self) -> OutputNames:
        """Every output path dvc.yaml declares now, and the outputs of its `foreach` and `matrix` stages as written:
        the names the outputs of items no longer listed (a dropped merge ratio or align method) still have."""
        with self._repo() as repo:
            definitions = load_file(repo, PROJECT_FILE).stages.resolver.definitions.values()
            return OutputNames({Path(out.def_path) for stage in repo.index.stages for out in stage.outs},
                               [template for d in definitions if hasattr(d, "template")
                                for template in _templates(d.template)])

    def out_of_date(self) -> dict[str, list]:
        """What `dvc status` says: each stage that is not up to date, with what changed (deps, params, outs)."""
        with self._repo() as repo:
            return repo.status()

    def cache_holds(self, path: Path) -> bool:
        """True when DVC's cache holds the file or folder `path` (relative to the root) as it is now, every file of
        it: a dvc.lock that records it brings it back with `dvc checkout`."""
        with self._repo() as repo:
            cache = repo.cache.local
            _, _, found = build(cache, str(self.root / path), cache.fs, "md5", ignore=repo.dvcignore, dry_run=True)
            parts = [found.hash_info, *(info for _, _, info in found)] if isinstance(found, Tree) else [found.hash_info]
            return all(cache.exists(info.value) for info in parts)

    def experiments(self) -> tuple[Experiment, list[Experiment]]:
        """The workspace and every saved experiment, on whichever commit it was saved (`dvc exp show` lists only
        HEAD's; `-A` would read every commit of the history), oldest first."""
        with self._repo() as repo:
            baselines = list(repo.experiments.ls(all_commits=True))
            states = repo.experiments.show(revs=baselines or None, hide_queued=True, hide_failed=True)
        if not states:  # a repository without a commit: nothing saved, nothing DVC reads from the workspace
            return Experiment("workspace", None, {}, {}), []
        saved = [_experiment(run.name, run.data) for state in states[1:] for exp_range in state.experiments or []
                 for run in exp_range.revs[:1] if run.data]
        return _experiment("workspace", states[0].data), sorted(saved, key=lambda exp: exp.created or datetime.min)
