"""The `inputs` stage: every file a stage reads from outside the project, mirrored as links DVC can hash.

params.yaml names the user's checkpoints, eval sets, SFT data and task vectors by path; a path is not their
content, and DVC cannot template a null path or a list into `deps`. So this stage (always run, in a second or
two) mirrors each input under `inputs/<group>/` as one link per file, with `links.json` saying what the links stand
for (the stage's declared output, which orders the readers after it), and the stages that read a group list that
folder in their deps: DVC follows the links, records each input's md5 in dvc.lock and keeps the hash in its state
cache (a gigabyte checkpoint is read again only when its size or mtime changed). An input edited in place then
makes `dvc status` name exactly the stages that read it, and what depends on them.

A link is relative when the param is a relative path (resolved against the project root), so a project moved
together with its inputs keeps them; an absolute param gives an absolute link.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import json

from pipelines.atomic import atomic_dir
from pipelines.config import Params

INPUTS = "inputs"
GROUPS = ("upstream", "eval", "align", "merge")  # a folder each: the deps of the stages that read them
# in each group folder, the stage's declared output: what each link stands for. The links themselves are no
# stage's output: DVC manages symlinks in outputs as its own cache links (`dvc commit` replaced them by copies)
LINKS = "links.json"


def named_inputs(params: Params) -> Iterator[tuple[str, str, str]]:
    """(group, name inside the group, path as params.yaml gives it) for every outside input the params name."""
    upstream, evaluate = params.upstream, params.eval
    for role in ("base", "chat"):
        if path := getattr(upstream, f"{role}_path"):
            yield "upstream", role, path
    for suite in ("instruction", "multiturn", "safety"):
        if path := getattr(evaluate.sets, suite):
            yield "eval", f"{suite}.jsonl", path
    if evaluate.lm_eval_tasks and evaluate.lm_eval_include_path:
        yield "eval", "lm_eval", evaluate.lm_eval_include_path
    if evaluate.refusal_classifier:
        yield "eval", "refusal_classifier", evaluate.refusal_classifier
    if params.align.data:
        yield "align", "data.jsonl", params.align.data
    for i, vector in enumerate(params.merge.vectors):
        yield "merge", f"{i}-{vector.name}/base", vector.base
        yield "merge", f"{i}-{vector.name}/tuned", vector.tuned


def _files(source: Path, given: str) -> Iterator[tuple[Path, Path]]:
    """(file, its path relative to the input) for a file input or every file under a folder input."""
    if source.is_file():
        yield source, Path()
    elif source.is_dir():
        yield from ((file, file.relative_to(source)) for file in sorted(source.rglob("*")) if file.is_file())
    else:
        raise FileNotFoundError(f"{given}: no such file or folder (named in params.yaml; `chatgraft check` lists "
                                "every input a run cannot use)")


def mirror_inputs(params: Params, root: Path) -> dict[str, dict[str, str]]:
    """Write `root/inputs/<group>/`: a link for every file of every outside input and `links.json` (an empty map
    for a group with none), replacing the previous mirror at once; returns each group's names and paths."""
    root = root.resolve()
    final = root / INPUTS
    groups: dict[str, dict[str, str]] = {group: {} for group in GROUPS}
    for group, name, given in named_inputs(params):
        groups[group][name] = given
    with atomic_dir(final, "input links") as staging:
        for group, inputs in groups.items():
            for name, given in inputs.items():
                _link_files(root, given, Path(group, name), staging, final)
            (staging / group).mkdir(exist_ok=True)
            (staging / group / LINKS).write_text(json.dumps(inputs, indent=1, sort_keys=True) + "\n")
    return groups


def _link_files(root: Path, given: str, place: Path, staging: Path, final: Path) -> None:
    """Link each file of the input `given` at `place` under `staging`, resolvable from `final` once renamed there:
    relative to it when `given` is relative (to the project root), else absolute."""
    relative = not Path(given).is_absolute()
    for file, inner in _files(root / given, given):
        link = staging / place / inner
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(root / given / inner, (final / place / inner).parent) if relative
                        else file.absolute())
