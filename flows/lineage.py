"""Lineage tags that tie a run or model version to its code, data, orchestration run and environment."""
from __future__ import annotations

import subprocess
from pathlib import Path

from prefect.runtime import flow_run

from flows.environment_lineage import PACKAGES_ARTIFACT, environment_tags, installed_packages
from flows.tracking.stage_runs import log_text
from flows.tracking.store import Store


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
    """git sha, Prefect flow-run id, the run's DVC experiment, the environment (`env.*`: packages, CPU, torch's
    CPU capability and threads, accelerator), and `dvc.md5.<path>` for each dvc.lock hash given."""
    tags = {"git_sha": git_revision(root), "prefect_flow_run_id": str(flow_run.id or "none"),
            "dvc_experiment": experiment_name() or "none", **environment_tags()}
    tags.update({f"dvc.md5.{path}": md5 for path, md5 in (hashes or {}).items()})
    return tags


def log_environment(store: Store, run_id: str) -> None:
    """The full package list whose hash is `env.packages_sha256`, as the run's `environment/packages.txt`."""
    log_text(store, run_id, "\n".join(installed_packages()) + "\n", PACKAGES_ARTIFACT)
