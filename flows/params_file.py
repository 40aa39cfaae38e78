"""`--set key.path=value` overrides of params.yaml: applied and validated in memory, keeping the file's comments,
and written only when the caller says (`chatgraft run`: once its inputs are checked and the project is its own)."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from pipelines.atomic import write_text_atomic
from pipelines.config import Params, ParamsError, validate_params


@dataclass(frozen=True)
class Overridden:
    """A params file with overrides applied in memory: validated, not written yet."""

    path: Path
    before: str  # the file's text the overrides were applied to
    text: str  # the text with the overrides (`before` when there are none)
    params: Params

    def write(self) -> None:
        """Replace the file with the overridden text atomically; nothing is written when nothing changed."""
        if self.text != self.before:
            write_text_atomic(self.path, self.text)


def _round_trip_editor() -> YAML:
    """ruamel in round-trip mode that leaves untouched lines as they were: no wrapping, `null` kept as `null`."""
    editor = YAML()
    editor.width = 4096
    editor.representer.add_representer(
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null"))
    return editor


def _load(editor: YAML, text: str, what: str) -> Any:
    try:
        return editor.load(text)
    except YAMLError as error:
        raise ParamsError(f"{what} is not valid YAML: {error}") from None


def _overridden_text(path: Path, text: str, overrides: list[str]) -> str:
    """`text` with each `a.b.c=value` (value in YAML) set; ParamsError for a malformed one or a missing section."""
    editor = _round_trip_editor()
    document = _load(editor, text, str(path))
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key or "" in key.split("."):
            raise ParamsError(f"--set {override!r}: expected KEY.PATH=VALUE")
        node = document
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node, dict) or part not in node:
                raise ParamsError(f"--set {override!r}: {path} has no section {part!r} on the way to {key}")
            node = node[part]
        if not isinstance(node, dict):
            raise ParamsError(f"--set {override!r}: {'.'.join(parents)} in {path} is not a section of keys")
        node[leaf] = _load(editor, value, f"--set {override!r}: the value")  # keeps its style: [a, b] stays a flow list
    buffer = io.StringIO()
    editor.dump(document, buffer)
    return buffer.getvalue()


def with_overrides(path: Path, overrides: list[str]) -> Overridden:
    """The params file with `overrides` applied and validated in memory; ParamsError naming the bad key. The file
    is only read."""
    try:
        before = path.read_text()
    except OSError as error:
        raise ParamsError(f"{path}: cannot read it ({error.strerror})") from None
    text = _overridden_text(path, before, overrides) if overrides else before
    source = f"{path} with --set {' '.join(overrides)}" if overrides else str(path)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ParamsError(f"{source}: not valid YAML: {error}") from None
    return Overridden(path, before, text, validate_params(raw, source))


def apply_overrides(path: Path, overrides: list[str]) -> None:
    """Set each `a.b.c=value` in the params file; the file changes only if the result is valid."""
    with_overrides(path, overrides).write()
