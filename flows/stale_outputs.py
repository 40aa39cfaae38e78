"""Outputs no stage declares any more: a merge ratio, align method or evaluation dropped from params.yaml leaves its
model, scores and reports in the workspace, in the folders its `foreach` stage writes to. Found from DVC's own
graph (what dvc.yaml's stages declare now, against the names its `foreach` outputs take), reported by
`chatgraft status`, removed by `chatgraft clean`: never silently, a model only when DVC's cache holds it."""
from __future__ import annotations

import glob
import hashlib
import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from pipelines.atomic import write_json_atomic

if TYPE_CHECKING:  # DVC's import is most of what `chatgraft status` would wait for: only what finds a note needs it
    from flows.dvc_project import DvcProject, OutputNames, OutputTemplate

ITEM = re.compile(r"\$\{[^}]*\}")  # where a foreach or matrix item goes in an output's name
RECOVERY = ("To bring one back: DVC's cache keeps the models until `dvc gc`, and each `chatgraft run` is a DVC\n"
            "experiment holding its scores and reports (`dvc exp show`): `dvc exp apply <run>` restores that run's\n"
            "workspace, its models included.")
# `chatgraft status`'s last note, with what it was found from: while none of that changed, status prints it without
# importing DVC (~2 s of the command)
RECORDED_NOTE = Path(".chatgraft") / "stale-outputs.json"


@dataclass(frozen=True)
class StaleOutput:
    """An output in the workspace that no stage declares, relative to the project root."""

    path: Path
    size: int  # bytes, every file under it
    cached: bool  # of a kind DVC caches (models): removed only when its cache holds it

    def line(self) -> str:
        """The output, its size, and where it can be found again."""
        where = "in DVC's cache" if self.cached else "not cached: in the experiment of the run that wrote it"
        return f"  {self.path}  {_size(self.size)}  ({where})"


@dataclass
class Cleaning:
    """What `chatgraft clean` did, or would do with `dry_run`."""

    removed: list[StaleOutput]
    kept: list[StaleOutput]  # DVC's cache does not hold them: left for the user to look at
    recorded: list[str] = field(default_factory=list)  # stages whose dep folders held what went, recorded again
    rerun: list[str] = field(default_factory=list)  # stages made out of date by the removal otherwise


def _size(size: int) -> str:
    return f"{size}B" if size < 1000 else tqdm.format_sizeof(size, "B")


def _outputs(count: int) -> str:
    return f"{count} output{'s' if count != 1 else ''} no stage in dvc.yaml declares any more"


def _bytes(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())


def _patterns(templates: list[OutputTemplate]) -> list[str]:
    """Glob patterns of the names the `foreach` output templates take, whatever the item."""
    return ["*".join(glob.escape(part) for part in ITEM.split(template.path)) for template in templates]


def find_stale_outputs(project: DvcProject) -> list[StaleOutput]:
    """Each file or folder named as an output of a `foreach` stage (any item) that no stage declares now; hidden
    entries (a killed writer's staging, DVC's .gitignore) are not outputs."""
    return _stale(project.root, project.output_names())


def _stale(root: Path, names: OutputNames) -> list[StaleOutput]:
    found: dict[Path, StaleOutput] = {}
    for template, pattern in zip(names.templates, _patterns(names.templates)):
        for path in sorted(root.glob(pattern)):
            relative = path.relative_to(root)
            if relative not in names.declared and not path.name.startswith("."):
                found[relative] = StaleOutput(relative, _bytes(path), template.cached)
    return sorted(found.values(), key=lambda stale: stale.path)


def _fingerprint(root: Path, patterns: list[str]) -> str:
    """What a note is found from: dvc.yaml and params.yaml as written (DVC fills `foreach` from params.yaml), and
    every path the output patterns match, with its modification time."""
    digest = hashlib.sha256()
    for name in ("dvc.yaml", "params.yaml"):
        digest.update((root / name).read_bytes() if (root / name).exists() else b"")
    for pattern in patterns:
        for path in sorted(root.glob(pattern)):
            digest.update(f"{path.relative_to(root)} {path.lstat().st_mtime_ns}\n".encode())
    return digest.hexdigest()


def stale_outputs_note(root: Path) -> str | None:
    """A line for `chatgraft status` when the workspace holds outputs no stage declares; None when it holds none.
    Recorded in .chatgraft/, where the next status finds it while nothing it was found from changed."""
    from flows.dvc_project import DvcProject

    names = DvcProject(root).output_names()
    stale = _stale(root, names)
    note = None
    if stale:
        shown = ", ".join(str(s.path) for s in stale[:3]) + (f" and {len(stale) - 3} more" if len(stale) > 3 else "")
        note = (f"{_outputs(len(stale))} ({shown}; {_size(sum(s.size for s in stale))}): "
                "`chatgraft clean --dry-run` lists them, `chatgraft clean` removes them")
    patterns = _patterns(names.templates)
    write_json_atomic(root / RECORDED_NOTE, {"patterns": patterns, "fingerprint": _fingerprint(root, patterns),
                                             "note": note})
    return note


def recorded_note(root: Path) -> tuple[bool, str | None]:
    """(True, the note) when the last note found is still true (dvc.yaml, params.yaml and the outputs' folders are
    as they were), else (False, None): it has to be found again."""
    try:
        record = json.loads((root / RECORDED_NOTE).read_text())
        current = _fingerprint(root, record["patterns"])
    except (OSError, ValueError, KeyError, TypeError):
        return False, None
    return (True, record["note"]) if current == record["fingerprint"] else (False, None)


def _only_removed_deps(changes: list, removed: list[Path]) -> bool:
    """True when a stage's `dvc status` changes are all dep folders that held a removed output."""
    changed = [change.get("changed deps") if isinstance(change, dict) and len(change) == 1 else None
               for change in changes]
    return all(isinstance(deps, dict) and all(any(Path(dep) in path.parents for path in removed) for dep in deps)
               for deps in changed)


def clean_stale_outputs(project: DvcProject, dry_run: bool = False) -> Cleaning:
    """Remove the outputs no stage declares (but those of a cached kind DVC's cache does not hold: they are kept
    and said). A stage that was up to date and now differs only by a dep folder that held them (leaderboard and
    plots read metrics/eval, by the names their params give) is recorded again with `dvc commit`, so the removal
    reruns nothing. Call it holding the workspace (flows/workspace.py): nothing may run meanwhile."""
    stale = find_stale_outputs(project)
    keep = {s.path for s in stale if s.cached and not project.cache_holds(s.path)}
    cleaning = Cleaning([s for s in stale if s.path not in keep], [s for s in stale if s.path in keep])
    if dry_run or not cleaning.removed:
        return cleaning
    before = project.out_of_date()
    for stale_output in cleaning.removed:
        path = project.root / stale_output.path
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    removed = [s.path for s in cleaning.removed]
    for stage, changes in project.out_of_date().items():
        if stage in before:
            continue
        if _only_removed_deps(changes, removed):
            project.commit(stage)
            cleaning.recorded.append(stage)
        else:
            cleaning.rerun.append(stage)
    return cleaning


def describe_cleaning(cleaning: Cleaning, dry_run: bool) -> str:
    """What `chatgraft clean` prints: each output with its size, what was kept and why, how to get them back."""
    if not cleaning.removed and not cleaning.kept:
        return "Nothing to clean: every output in the workspace is declared by a stage of dvc.yaml."
    lines = []
    if cleaning.removed:
        total = _size(sum(s.size for s in cleaning.removed))
        lines += [f"{'Would remove' if dry_run else 'Removed'} {_outputs(len(cleaning.removed))} ({total}):",
                  *(s.line() for s in cleaning.removed)]
    if cleaning.kept:
        lines += ["Kept, not in DVC's cache (not written by a stage, or the cache was collected): remove them "
                  "yourself if they are not wanted:", *(f"  {s.path}  {_size(s.size)}" for s in cleaning.kept)]
    if cleaning.recorded:
        lines.append(f"Recorded again in dvc.lock, nothing to rerun: {', '.join(cleaning.recorded)} (their dep "
                     "folders held what went; they read only the files their params name)")
    if cleaning.rerun:
        lines.append(f"Out of date now, the next run reruns them: {', '.join(cleaning.rerun)}")
    if cleaning.removed:
        lines.append(RECOVERY if not dry_run else "Nothing was removed (--dry-run).")
    return "\n".join(lines)


if __name__ == "__main__":  # `chatgraft status` asks in a process of its own: the note, or nothing
    print(stale_outputs_note(Path(sys.argv[1])) or "")
