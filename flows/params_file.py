"""Apply `--set key.path=value` overrides to params.yaml, keeping its comments; validate before writing."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from pipelines.atomic import write_text_atomic
from pipelines.config import ParamsError, validate_params


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


def apply_overrides(path: Path, overrides: list[str]) -> None:
    """Set each `a.b.c=value` (value in YAML) in the params file; the file changes only if the result is valid."""
    if not overrides:
        return
    editor = _round_trip_editor()
    document = _load(editor, path.read_text(), str(path))
    for override in overrides:
        key, sep, text = override.partition("=")
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
        node[leaf] = _load(editor, text, f"--set {override!r}: the value")  # keeps its style: [a, b] stays a flow list
    buffer = io.StringIO()
    editor.dump(document, buffer)
    validate_params(yaml.safe_load(buffer.getvalue()), f"{path} with --set {' '.join(overrides)}")
    write_text_atomic(path, buffer.getvalue())
