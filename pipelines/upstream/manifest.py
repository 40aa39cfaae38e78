"""The upstream stage's manifest: where the base and chat checkpoints are, read by every later stage."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "upstream.json"


@dataclass(frozen=True)
class UpstreamPair:
    """Where the base and chat checkpoints are."""

    base: Path
    chat: Path


def read_upstream(upstream_dir: Path) -> UpstreamPair:
    """Resolve the base and chat paths recorded by the upstream stage."""
    manifest_path = upstream_dir / MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path}: missing; run the upstream stage first")
    manifest = json.loads(manifest_path.read_text())
    return UpstreamPair(base=upstream_dir / manifest["base"], chat=upstream_dir / manifest["chat"])
