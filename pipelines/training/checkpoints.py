"""Resumable training: Trainer checkpoints that count only once complete, and only for the same run.

The Trainer writes `checkpoint-<step>/` in place; a kill in the middle leaves a partial folder. A marker file,
written (by rename) after the Trainer's save returns, makes a checkpoint count; a fingerprint of the run's
params and data in the marker keeps a run from resuming another's checkpoints.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from transformers import TrainerCallback

from pipelines.atomic import write_json_atomic

MARKER = "chatgraft-complete.json"
PREFIX = "checkpoint-"


class MarkComplete(TrainerCallback):
    """After each save, mark the new checkpoint complete for this run's fingerprint."""

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201 (the Trainer's callback signature)
        if not state.is_world_process_zero:  # only the first process saves checkpoints
            return control
        folder = Path(args.output_dir) / f"{PREFIX}{state.global_step}"
        write_json_atomic(folder / MARKER, {"step": state.global_step, "fingerprint": self.fingerprint})
        return control


def _marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def last_complete_checkpoint(checkpoint_dir: Path, fingerprint: str, cleanup: bool = True) -> Path | None:
    """The newest complete checkpoint of this run; partial ones and other runs' are deleted when `cleanup`."""
    if not checkpoint_dir.exists():
        return None
    usable = []
    for folder in checkpoint_dir.glob(f"{PREFIX}*"):
        marker = _marker(folder)
        if marker is None or marker.get("fingerprint") != fingerprint:
            if cleanup:
                shutil.rmtree(folder, ignore_errors=True)
        else:
            usable.append((int(marker["step"]), folder))
    return max(usable)[1] if usable else None


def clear_checkpoints(checkpoint_dir: Path) -> None:
    """Remove the checkpoints once the run's result is safely written (they are several times the model)."""
    for folder in checkpoint_dir.glob(f"{PREFIX}*"):
        shutil.rmtree(folder)
