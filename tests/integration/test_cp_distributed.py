"""`cp` with two data-parallel CPU processes (torchrun, gloo) against one process with the same global batch, on
one node and as two nodes meeting at a c10d rendezvous on 127.0.0.1.

Both draw the same batches (accelerate's seeded sampler; the two processes split each batch), and DDP averages the
gradients, so the runs agree up to float summation order. This catches what breaks data parallelism: processes
training alone (no gradient sync), losses scaled by the process count, other batches, outputs from every rank. The
same holds for a streamed corpus (cp.streaming). Two agents on one host cannot show what nodes must share (the
project's checkpoints/cp and models/cp: README "CP on several nodes").
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import psutil

import pytest
import yaml

from flows.dvc_project import DvcProject
from flows.params_file import apply_overrides
from pipelines.training.distributed import NODE_ENV
from tests.conftest import TINY_PARAMS, free_port_base, make_project

pytestmark = pytest.mark.integration


LOCAL_NODES = Path(__file__).with_name("local_nodes.py")


def _cp_metrics(root: Path) -> dict:
    project = DvcProject(root)  # the flow's own DVC runner
    for stage in ("inputs", "inbox", "corpus", "upstream", "cp"):
        project.reproduce(stage)
    return json.loads((root / "reports" / "cp.json").read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A project whose cp ran 12 steps of a batch of 8 in one process, and its report."""
    params = yaml.safe_load(yaml.safe_dump(TINY_PARAMS))
    params["cp"] |= {"steps": 12, "batch_size": 8, "save_every": 0}
    root = make_project(tmp_path_factory.mktemp("single") / "project", params)
    return root, _cp_metrics(root)


def _with_distributed(source: Path, destination: Path, **distributed: object) -> Path:
    """A copy of `source` (corpus and pair as built) whose cp runs with these cp.distributed settings."""
    root = Path(shutil.copytree(source, destination, symlinks=True))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["cp"]["distributed"] = distributed
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def test_two_gloo_processes_match_one(tmp_path: Path, single: tuple[Path, dict]) -> None:
    single_root, single = single
    double_root = _with_distributed(single_root, tmp_path / "double", nproc_per_node=2)
    double = _cp_metrics(double_root)
    assert double["steps"] == single["steps"] == 12
    print(f"train loss {single['train_loss']:.6f} vs {double['train_loss']:.6f}, "
          f"valid loss {single['valid_loss']:.6f} vs {double['valid_loss']:.6f}")
    assert abs(double["train_loss"] - single["train_loss"]) < 1e-3
    assert abs(double["valid_loss"] - single["valid_loss"]) < 1e-3
    first_loss = next(float(line.split(",")[1]) for line in
                      (single_root / "plots" / "cp_loss.csv").read_text().splitlines()[1:] if line.split(",")[1])
    assert double["train_loss"] < 0.95 * first_loss  # it trained (held-out text is a phrasing it never sees)
    assert (double_root / "models" / "cp" / "model.safetensors").exists()

    # a streamed corpus: rank 0 reads it and hands each process its slice of the batch
    single_root = Path(shutil.copytree(single_root, tmp_path / "single", symlinks=True))  # the fixture's stays
    for root in (single_root, double_root):
        apply_overrides(root / "params.yaml", ["cp.streaming=true"])
    single, double = _cp_metrics(single_root), _cp_metrics(double_root)
    assert double["train_blocks"] is None and double["steps"] == 12
    assert abs(double["train_loss"] - single["train_loss"]) < 1e-3


def _complete_checkpoints(root: Path) -> list[int]:
    markers = (root / "checkpoints" / "cp").glob("*/chatgraft-complete.json")
    return sorted(int(marker.parent.name.split("-")[1]) for marker in markers)


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and everything it started, as when its host goes down."""
    process = psutil.Process(pid)
    for member in [process, *process.children(recursive=True)]:
        with suppress(psutil.NoSuchProcess):
            member.kill()


def test_two_nodes_match_one_and_resume_after_a_node_dies(tmp_path: Path, single: tuple[Path, dict]) -> None:
    single_root, single = single
    node_command = f"{sys.executable} -m pipelines cp"
    root = _with_distributed(single_root, tmp_path / "nodes", nnodes=2, rdzv_endpoint=f"127.0.0.1:{free_port_base(1)}",
                             launch=f"{sys.executable} {LOCAL_NODES} 2 {node_command}")
    nodes = _cp_metrics(root)  # the cp stage runs `launch`, which starts both nodes' agents and waits
    print(f"train loss {single['train_loss']:.7f} vs {nodes['train_loss']:.7f}, "
          f"valid loss {single['valid_loss']:.7f} vs {nodes['valid_loss']:.7f}")
    assert nodes["steps"] == 12
    assert abs(nodes["train_loss"] - single["train_loss"]) < 1e-4
    # the held-out loss weighs the last block of an uneven set less under several processes (transformers repeats
    # each loss by the global eval batch, accelerate keeps one copy of the last): 7 blocks here, 6e-4 apart
    assert abs(nodes["valid_loss"] - single["valid_loss"]) < 1e-3

    # a node dies after a checkpoint (its agent and worker, as when a host goes down): the other node fails, and
    # the stage started again resumes both from the last complete checkpoint
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["cp"] |= {"steps": 24, "save_every": 2}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    environment = {**os.environ, NODE_ENV: "1"}
    agents = [subprocess.Popen(node_command.split(), cwd=root, env=environment, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT) for _ in range(2)]
    try:
        deadline = time.monotonic() + 300
        while not _complete_checkpoints(root) and time.monotonic() < deadline and agents[0].poll() is None:
            time.sleep(0.2)
        assert _complete_checkpoints(root), "no checkpoint was completed"
        _kill_tree(agents[1].pid)  # torchrun starts its workers in sessions of their own
        assert agents[0].wait(timeout=180) != 0  # the surviving node cannot go on alone
    finally:
        for agent in agents:
            if agent.poll() is None:
                _kill_tree(agent.pid)
                agent.wait()
    last = _complete_checkpoints(root)[-1]
    assert last < 24
    resumed = _cp_metrics(root)
    assert resumed["resumed_from_step"] == last
    assert resumed["steps"] == 24
