"""How the cp stage starts torchrun: one node standalone, several through the c10d rendezvous, a launch command once."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipelines.config import DistributedParams, ParamsError, validate_params
from pipelines.training.distributed import NODE_ENV, relaunch, torchrun_args


def test_one_node_is_standalone_and_several_meet_at_the_rendezvous(monkeypatch: pytest.MonkeyPatch) -> None:
    assert torchrun_args(DistributedParams(nproc_per_node=2)) == ["--standalone", "--nproc_per_node=2"]
    monkeypatch.setenv("CHATGRAFT_RDZV_HOST", "node-17")
    nodes = DistributedParams(nproc_per_node=8, nnodes=2, rdzv_endpoint="$CHATGRAFT_RDZV_HOST:29500", rdzv_id="run-3")
    assert torchrun_args(nodes) == ["--nnodes=2", "--nproc_per_node=8", "--rdzv_backend=c10d",
                                    "--rdzv_endpoint=node-17:29500", "--rdzv_id=run-3"]
    monkeypatch.delenv("CHATGRAFT_RDZV_HOST")
    with pytest.raises(ValueError, match=r"rdzv_endpoint .*CHATGRAFT_RDZV_HOST is not set"):
        torchrun_args(nodes)


def test_several_nodes_need_an_endpoint_and_the_batch_splits_over_every_process() -> None:
    cp = {"steps": 3, "learning_rate": 1e-3, "batch_size": 8}
    with pytest.raises(ParamsError, match="nnodes 2 needs rdzv_endpoint"):
        validate_params({"cp": cp | {"distributed": {"nnodes": 2}}})
    with pytest.raises(ParamsError, match="host:port"):
        validate_params({"cp": cp | {"distributed": {"nnodes": 2, "rdzv_endpoint": "node-0"}}})
    with pytest.raises(ParamsError, match=r"batch_size 8 does not split over 16 processes"):
        validate_params({"cp": cp | {"distributed": {"nnodes": 2, "nproc_per_node": 8,
                                                     "rdzv_endpoint": "node-0:29500"}}})


def test_the_launch_command_runs_once_with_the_node_marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = tmp_path / "seen"
    launch = f"{sys.executable} -c \"import os; open('{seen}', 'w').write(os.environ['{NODE_ENV}'])\""
    monkeypatch.delenv(NODE_ENV, raising=False)
    nodes = DistributedParams(nnodes=2, rdzv_endpoint="127.0.0.1:29500", launch=launch)
    assert relaunch(nodes, ["cp"]) == 0
    assert seen.read_text() == "1"  # the nodes it starts run their own agent, never the launch again
