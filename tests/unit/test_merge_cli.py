"""`chatgraft merge`: the merge on its own, configured by a merge.yaml; bad input exits non-zero and writes nothing."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from flows.cli import app
from tests.unit.merge_models import make_trio, reference, weights


def _invoke(trio: dict[str, Path], out: Path, *extra: str):
    args = ["merge", "--base", str(trio["base"]), "--chat", str(trio["chat"]), "--cp", str(trio["cp"]),
            "--out", str(out), *extra]
    return CliRunner().invoke(app, args)


def test_merge_command_with_a_config_file(tmp_path: Path) -> None:
    trio = make_trio(tmp_path)
    config = tmp_path / "merge.yaml"
    config.write_text("embedding_rows: skip\nrules:\n  - {pattern: '*norm*', action: skip}\n")
    result = _invoke(trio, tmp_path / "merged", "--ratio", "0.5", "--config", str(config))
    assert result.exit_code == 0, result.output
    base, chat, cp, merged = (weights(p) for p in (trio["base"], trio["chat"], trio["cp"], tmp_path / "merged"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(merged[name], reference(cp[name], [(0.5, chat[name], base[name])]))
    assert torch.equal(merged["model.norm.weight"], cp["model.norm.weight"])
    assert torch.equal(merged["lm_head.weight"], cp["lm_head.weight"])
    report = json.loads((tmp_path / "merged.merge-report.json").read_text())
    assert report["ratio"] == 0.5 and report["embedding_rows"] == "skip"


def test_bad_config_key_is_named(tmp_path: Path) -> None:
    trio = make_trio(tmp_path)
    config = tmp_path / "merge.yaml"
    config.write_text("rules:\n  - {pattern: '*norm*', actoin: skip}\n")
    result = _invoke(trio, tmp_path / "merged", "--config", str(config))
    assert result.exit_code == 1
    assert "merge.yaml: invalid params" in result.output and "rules.0.actoin: unknown key" in result.output
    assert not (tmp_path / "merged").exists()


def _corrupt(trio: dict[str, Path]) -> str:
    (trio["chat"] / "model.safetensors").write_bytes(b"\x00" * 16)
    return "chat/model.safetensors: unreadable safetensors file"


def _other_architecture(trio: dict[str, Path]) -> str:
    config = json.loads((trio["cp"] / "config.json").read_text())
    (trio["cp"] / "config.json").write_text(json.dumps({**config, "model_type": "mistral"}))
    return "architectures differ: cp mistral"


def _infinite(trio: dict[str, Path]) -> str:
    tensors = weights(trio["base"])
    tensors["model.norm.weight"][0] = float("inf")
    save_file(tensors, trio["base"] / "model.safetensors", metadata={"format": "pt"})
    return "tensor 'model.norm.weight': the merge produced NaN or Inf"


@pytest.mark.parametrize("spoil", [_corrupt, _other_architecture, _infinite])
def test_bad_input_exits_non_zero_and_writes_nothing(tmp_path: Path, spoil) -> None:
    trio = make_trio(tmp_path)
    expected = spoil(trio)
    result = _invoke(trio, tmp_path / "merged")
    assert result.exit_code == 1
    assert expected in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "chat", "cp"]


def test_out_holding_a_users_files_is_refused_and_nothing_is_lost(tmp_path: Path) -> None:
    trio = make_trio(tmp_path)
    models = tmp_path / "models"
    shutil.copytree(trio["chat"], models / "another-model")
    (models / "notes.txt").write_text("do not lose me")
    before = {p: p.read_bytes() for p in models.rglob("*") if p.is_file()}
    result = _invoke(trio, models)
    assert result.exit_code == 1
    assert f"{models}: already holds files chatgraft did not write (another-model, notes.txt)" in result.output
    assert "--overwrite" in result.output
    assert {p: p.read_bytes() for p in models.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "models.merge-report.json").exists()

    assert _invoke(trio, models, "--overwrite").exit_code == 0
    assert not (models / "notes.txt").exists() and (models / "model.safetensors").exists()


def test_a_previous_merge_is_replaced_without_asking(tmp_path: Path) -> None:
    trio = make_trio(tmp_path)
    assert _invoke(trio, tmp_path / "merged", "--ratio", "0.5").exit_code == 0
    first = weights(tmp_path / "merged")
    result = _invoke(trio, tmp_path / "merged", "--ratio", "1.0")
    assert result.exit_code == 0, result.output
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(weights(tmp_path / "merged")[name], first[name])
