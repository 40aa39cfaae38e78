"""The `pick` stage: the merged model the align stages tune, chosen by the leaderboard's rule from the merged
models' scores. A file of its own, naming the model and what identifies its content, so that align depends on it
and not on the whole models/merged folder: a score that moves without changing the pick, a ratio added or dropped,
retrains nothing; a picked model whose content changed does."""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from pipelines.atomic import write_json_atomic
from pipelines.config import PromoteParams
from pipelines.leaderboard import read_metrics
from pipelines.model_card import weights_fingerprint
from pipelines.promotion import rank_candidates

PICKED = "merged"  # the key of the pick file that names the candidate
CONTENT = "content"  # the key of the picked model's identity


def model_identity(folder: Path) -> str:
    """What changes when a model folder's content does: its weights' fingerprint (config and sampled weights, as
    model cards give it) and the sha256 of every other file (tokenizer, chat template, reports), small files."""
    digest = hashlib.sha256(weights_fingerprint(folder).encode())
    weights = {".safetensors", ".bin"}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix not in weights):
        digest.update(f"{path.relative_to(folder)}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def pick_merged(metric_files: dict[str, Path], policy: PromoteParams, pick_path: Path,
                model_dir: Callable[[str], Path]) -> str:
    """Write to `pick_path` and return the merged candidate (`name -> metrics file`) the leaderboard would rank
    first (eligible first, then the primary metric), with the identity of its folder (`model_dir(name)`)."""
    picked = rank_candidates(read_metrics(metric_files), policy)[0].name
    write_json_atomic(pick_path, {PICKED: picked, CONTENT: model_identity(model_dir(picked))})
    return picked
