"""Shared fixtures: offline settings, tiny models, and throwaway chatgraft projects (git + DVC) on tiny worlds."""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import yaml

from flows.dvc_project import DvcProject
from flows.environment import apply_offline_defaults
from flows.tracking.store import embedded_uri
from pipelines.config import AlignParams, MergeParams
from pipelines.evaluate.server import free_port  # noqa: F401 (the tests' port helper)

REPO = Path(__file__).resolve().parents[1]
apply_offline_defaults()

# A world small enough to run every stage in seconds; the recipe is the default one, only smaller.
TINY_PARAMS = {
    "data": {"seed": 0, "source_entities": 8, "target_entities": 8, "pretrain_repeats": 4, "cp_repeats": 4},
    "upstream": {
        "tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
        "pretrain": {"steps": 30, "batch_size": 8, "block_size": 32, "learning_rate": 2.0e-3},
        "chat_tune": {"steps": 20, "batch_size": 8, "block_size": 32, "learning_rate": 1.0e-3},
    },
    "cp": {"steps": 20, "batch_size": 8, "block_size": 32, "learning_rate": 1.0e-3},
    # dvc.yaml names each merge key (so a ratio change reruns only its branch): all must be in params.yaml
    "merge": {**MergeParams().model_dump(), "ratios": [0.5, 1.0], "embedding_rows": "specials"},
    "eval": {"max_new_tokens": 8, "max_questions": 8, "block_size": 32},
    "promote": {"primary_metric": "answer_accuracy", "higher_is_better": True, "guardrails": {}},
    # dvc.yaml names align keys too; methods [] keeps the flow tests short (one test turns them on)
    "align": {**AlignParams().model_dump(), "methods": [],
              "train": {"steps": 12, "batch_size": 8, "block_size": 32, "learning_rate": 2.0e-3}},
    # the fine-tuned-first family, off like align (the retrain flow's test turns it on)
    "finetune": {"methods": [], "ratios": [1.0]},
    # the answers' evaluation view costs seconds a candidate: the retrain flow's test turns it on
    "flow": {"retries": 2, "retry_delay_seconds": 1.0, "answers_view": False},
}
# The whole flow with one merge branch: for tests of the orchestration around the stages, not of the ratios
ONE_BRANCH_PARAMS = {**TINY_PARAMS, "merge": {**TINY_PARAMS["merge"], "ratios": [1.0]}}


def run(cmd: list[str], cwd: Path) -> str:
    """Run a command and fail the test with its output if it fails."""
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def free_port_base(count: int) -> int:
    """The first of `count` consecutive TCP ports on 127.0.0.1 that nothing listens on now, drawn below the
    ephemeral range (client sockets never take them): for the local stack, whose services take a base port and
    the next ones."""
    for base in random.sample(range(20000, 32000, count), 100):
        if all(_bindable(port) for port in range(base, base + count)):
            return base
    raise RuntimeError(f"no {count} free consecutive ports between 20000 and 32000")


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_until(check: Callable[[], bool], what: str, seconds: float = 180, interval: float = 1.0) -> None:
    """Poll `check` until it holds; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {seconds} s")


def answers_health(url: str) -> bool:
    """Whether the server at `url` answers GET /health with 2xx."""
    try:
        return requests.get(f"{url}/health", timeout=2).ok
    except requests.RequestException:  # not listening yet, or too busy starting to answer in time
        return False


def ask_served_model(root: Path, model_uri: str, question: str) -> dict:
    """Serve `model_uri` of `root`'s embedded MLflow with `mlflow models serve`, ask one chat question, stop the
    server by its process id; returns the completion's one choice, checked to be a well-formed one."""
    port = free_port()
    venv_bin = str(Path(sys.executable).parent)  # mlflow starts `uvicorn` from PATH, as in an activated venv
    env = {**os.environ, "MLFLOW_TRACKING_URI": embedded_uri(root), "PATH": f"{venv_bin}:{os.environ['PATH']}"}
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", model_uri,
                               "--env-manager", "local", "-p", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: answers_health(url), "mlflow models serve", seconds=180)
        request = {"messages": [{"role": "user", "content": question}], "max_tokens": 3}
        answer = requests.post(f"{url}/invocations", json=request, timeout=60)
        assert answer.ok, answer.text
        (completion,) = answer.json()  # one OpenAI-style chat completion per request
        (choice,) = completion["choices"]
        # a tiny model may end its turn at once (CPU numerics decide): the answer's shape is what is checked
        assert choice["finish_reason"] in ("stop", "length")
        return choice
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


LINK_TYPES = DvcProject(REPO).link_types()


def make_project(root: Path, params: dict) -> Path:
    """A git + DVC project with chatgraft's dvc.yaml and stage code, the given params and a local DVC remote: what a
    fresh clone holds (no data/incoming: the inbox stage makes it)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(REPO / "pipelines", root / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "data" / "documents").mkdir(parents=True)
    shutil.copy(REPO / "data" / "documents" / "README.md", root / "data" / "documents" / "README.md")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], root)
    run([sys.executable, "-m", "dvc", "init", "-q"], root)
    run([sys.executable, "-m", "dvc", "config", "cache.type", LINK_TYPES], root)  # what the repository ships
    shutil.copy(REPO / ".dvcignore", root / ".dvcignore")
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    run([sys.executable, "-m", "dvc", "remote", "add", "-q", "-d", "local", str(root.parent / "dvc-remote")], root)
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm", "init"], root)
    return root


@pytest.fixture
def tiny_params() -> dict:
    """A deep copy of the tiny world's params, free to change."""
    return yaml.safe_load(yaml.safe_dump(TINY_PARAMS))


# The longest modules first (measured on a 2-core machine), so that pytest-xdist's two workers, each given whole
# files (--dist loadfile), end together instead of one starting a long module when the other is nearly done
# (`make test` passes --no-loadscope-reorder: xdist otherwise orders files by their number of tests).
LONGEST_FIRST = ["test_retrain_flow.py", "test_stack.py", "test_crash_recovery.py", "test_hub_world.py",
                 "test_cp_distributed.py", "test_parallel_stages.py", "test_schedule.py", "test_language_flow.py",
                 "test_killed_run_leaves_nothing.py", "test_cp_resume.py", "test_ui_moves.py", "test_ui_console.py",
                 "test_inbox.py", "test_promotion_moves.py", "test_fsdp_weights.py", "test_stale_outputs.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the longest modules first; each module's tests keep their order (the sort is stable)."""
    items.sort(key=lambda item: LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST
               else len(LONGEST_FIRST))
