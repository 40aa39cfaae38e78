"""Lineage tags that tie a run or model version to its code, data and orchestration run."""
from __future__ import annotations

import subprocess
from pathlib import Path

from prefect.runtime import flow_run


def git_revision(root: Path) -> str:
    """HEAD's sha, with `-dirty` when tracked files changed; `unknown` outside a git repository or without git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
    except FileNotFoundError:  # no git program (a bare accelerator image): DVC itself reads the repository
        return "unknown"
    if not sha:
        return "unknown"
    return f"{sha}-dirty" if git("status", "--porcelain", "--untracked-files=no") else sha


def experiment_name() -> str | None:
    """The DVC experiment a flow run is saved as (`dvc exp show`): the Prefect flow run's name; None outside one."""
    return flow_run.name


def lineage_tags(root: Path, hashes: dict[str, str] | None = None) -> dict[str, str]:
    """git sha, Prefect flow-run id, the run's DVC experiment, and `dvc.md5.<path>` for each dvc.lock hash given."""
    tags = {"git_sha": git_revision(root), "prefect_flow_run_id": str(flow_run.id or "none"),
            "dvc_experiment": experiment_name() or "none"}
    tags.update({f"dvc.md5.{path}": md5 for path, md5 in (hashes or {}).items()})
    return tags
