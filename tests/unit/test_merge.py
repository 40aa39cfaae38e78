"""The chat-vector merge against a plain-torch reference, its rules and outputs, and its errors on bad input."""
import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, MistralConfig, MistralForCausalLM

from pipelines.config import MergeSettings, TensorRule
from pipelines.merge.checkpoint import CheckpointError
from tests.unit.merge_models import VOCAB_MATRICES, make_trio, merge, reference, save, weights


@pytest.fixture
def trio(tmp_path: Path) -> dict[str, Path]:
    return make_trio(tmp_path)


def _assert_reference(trio: dict[str, Path], merged_dir: Path, ratio: float = 0.7) -> None:
    base, chat, cp, merged = (weights(p) for p in (trio["base"], trio["chat"], trio["cp"], merged_dir))
    assert merged.keys() == cp.keys()
    for name in cp:
        assert torch.equal(merged[name], reference(cp[name], [(ratio, chat[name], base[name])])), name


def test_overlap_equals_reference_merge(trio: dict[str, Path], tmp_path: Path) -> None:
    merge(trio, tmp_path / "merged")
    _assert_reference(trio, tmp_path / "merged")


def test_bf16_sharded_inputs_and_outputs_equal_reference(tmp_path: Path) -> None:
    trio = make_trio(tmp_path, dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(trio["cp"])
    save(model, AutoTokenizer.from_pretrained(trio["cp"]), trio["cp"], max_shard_size="10KB")
    (trio["cp"] / "model.safetensors").unlink()
    assert (trio["cp"] / "model.safetensors.index.json").exists()

    report = merge(trio, tmp_path / "merged", max_shard_size="8KB")
    files = sorted(p.name for p in (tmp_path / "merged").glob("*.safetensors"))
    assert len(files) > 1 and files == sorted(report.files)
    index = json.loads((tmp_path / "merged" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(weights(trio["cp"]))
    assert all(t.dtype == torch.bfloat16 for t in weights(tmp_path / "merged").values())
    _assert_reference(trio, tmp_path / "merged")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert torch.equal(loaded.model.norm.weight, weights(tmp_path / "merged")["model.norm.weight"])


def test_rules_first_match_wins(trio: dict[str, Path], tmp_path: Path) -> None:
    rules = [TensorRule(pattern="*.mlp.*", ratio=0.25), TensorRule(pattern="*norm*", action="skip"),
             TensorRule(pattern="*.mlp.up_proj.*", action="skip")]
    report = merge(trio, tmp_path / "merged", rules=rules)
    base, chat, cp, merged = (weights(p) for p in (trio["base"], trio["chat"], trio["cp"], tmp_path / "merged"))
    actions = {t.name: (t.action, t.ratio) for t in report.tensors}
    for name in cp:
        if ".mlp." in name:  # the first rule, even for up_proj
            assert torch.equal(merged[name], reference(cp[name], [(0.25, chat[name], base[name])])), name
            assert actions[name] == ("add", 0.25)
        elif "norm" in name:
            assert torch.equal(merged[name], cp[name]) and actions[name][0] == "skip", name
        else:
            assert torch.equal(merged[name], reference(cp[name], [(0.7, chat[name], base[name])])), name


def test_specials_policy_moves_only_special_token_rows(trio: dict[str, Path], tmp_path: Path) -> None:
    merge(trio, tmp_path / "merged", embedding_rows="specials")
    cp, merged = weights(trio["cp"]), weights(tmp_path / "merged")
    specials = sorted(i for i, t in AutoTokenizer.from_pretrained(trio["chat"]).added_tokens_decoder.items()
                      if t.special)
    for name in VOCAB_MATRICES:
        changed = (merged[name] != cp[name]).any(dim=1).nonzero().flatten().tolist()
        assert changed == specials, name
    assert not torch.equal(merged["model.norm.weight"], cp["model.norm.weight"])  # body tensors get the delta


def test_skip_policy_leaves_vocabulary_matrices_as_cp(trio: dict[str, Path], tmp_path: Path) -> None:
    merge(trio, tmp_path / "merged", embedding_rows="skip")
    cp, merged = weights(trio["cp"]), weights(tmp_path / "merged")
    assert all(torch.equal(merged[name], cp[name]) for name in VOCAB_MATRICES)


def test_output_is_a_chat_model_with_a_report(trio: dict[str, Path], tmp_path: Path) -> None:
    merge(trio, tmp_path / "merged")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(trio["chat"]).chat_template
    assert tokenizer.eos_token == "<|end|>"
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "merged").config.eos_token_id == tokenizer.eos_token_id
    report = json.loads((tmp_path / "merged.json").read_text())
    norm = next(t for t in report["tensors"] if t["name"] == "model.norm.weight")
    cp, chat, base = (weights(trio[r])["model.norm.weight"] for r in ("cp", "chat", "base"))
    assert norm["delta_norm"] == pytest.approx(float((0.7 * (chat - base)).norm()), rel=1e-5)
    assert norm["relative_change"] == pytest.approx(norm["delta_norm"] / float(cp.norm()), rel=1e-5)
    assert report["vocabulary"]["rows"] == weights(trio["cp"])["model.embed_tokens.weight"].shape[0]


def _assert_no_output(tmp_path: Path) -> None:
    assert not (tmp_path / "merged").exists()
    assert not (tmp_path / "merged.json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".merged")] == []


def test_architecture_mismatch_is_refused(trio: dict[str, Path], tmp_path: Path) -> None:
    config = MistralConfig(**{k: v for k, v in AutoModelForCausalLM.from_pretrained(trio["cp"]).config.to_dict().items()
                              if k not in ("model_type", "architectures")})
    save(MistralForCausalLM(config), AutoTokenizer.from_pretrained(trio["cp"]), trio["cp"])
    with pytest.raises(CheckpointError, match=r"architectures differ: cp mistral \['MistralForCausalLM'\], base llama"):
        merge(trio, tmp_path / "merged")
    _assert_no_output(tmp_path)


def test_shape_mismatch_names_the_tensor_and_writes_nothing(trio: dict[str, Path], tmp_path: Path) -> None:
    chat = weights(trio["chat"])
    chat["model.layers.1.mlp.up_proj.weight"] = torch.zeros(48, 16)
    save_file(chat, trio["chat"] / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"tensor 'model\.layers\.1\.mlp\.up_proj\.weight': shapes differ: "
                                              r"cp \(32, 16\), chat \(48, 16\)"):
        merge(trio, tmp_path / "merged")
    _assert_no_output(tmp_path)


@pytest.mark.parametrize("role", ["chat", "cp"])
def test_missing_tensor_is_named(trio: dict[str, Path], tmp_path: Path, role: str) -> None:
    tensors = weights(trio[role])
    del tensors["model.norm.weight"]
    save_file(tensors, trio[role] / "model.safetensors", metadata={"format": "pt"})
    expected = r"has no tensor 'model\.norm\.weight'" if role == "chat" else r"has tensor 'model\.norm\.weight' that cp lacks"
    with pytest.raises(CheckpointError, match=expected):
        merge(trio, tmp_path / "merged")
    _assert_no_output(tmp_path)


def test_nan_in_the_result_is_refused(trio: dict[str, Path], tmp_path: Path) -> None:
    tensors = weights(trio["cp"])
    tensors["model.layers.1.post_attention_layernorm.weight"][3] = float("nan")
    save_file(tensors, trio["cp"] / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"tensor 'model\.layers\.1\.post_attention_layernorm\.weight': "
                                              r"the merge produced NaN"):
        merge(trio, tmp_path / "merged")
    _assert_no_output(tmp_path)


def test_corrupt_file_is_named(trio: dict[str, Path], tmp_path: Path) -> None:
    (trio["base"] / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"base/model\.safetensors: unreadable"):
        merge(trio, tmp_path / "merged")
    _assert_no_output(tmp_path)


def test_pickle_checkpoints_need_an_opt_in(trio: dict[str, Path], tmp_path: Path) -> None:
    torch.save(weights(trio["chat"]), trio["chat"] / "pytorch_model.bin")
    (trio["chat"] / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"chat: only pickle \(\.bin\) weights.*allow_pickle"):
        merge(trio, tmp_path / "merged")
    _assert_no_output(tmp_path)
    merge(trio, tmp_path / "merged", allow_pickle=True)
    base, cp, merged = weights(trio["base"]), weights(trio["cp"]), weights(tmp_path / "merged")
    chat = torch.load(trio["chat"] / "pytorch_model.bin", weights_only=True)
    assert all(torch.equal(merged[n], reference(cp[n], [(0.7, chat[n], base[n])])) for n in cp)


def test_settings_reject_a_vector_named_chat() -> None:
    with pytest.raises(ValueError, match="not 'chat'"):
        MergeSettings(vectors=[{"name": "chat", "base": "b", "tuned": "t"}])


def test_the_merged_folder_carries_its_report_and_a_model_card(tmp_path: Path) -> None:
    trio = make_trio(tmp_path)
    for role in ("base", "chat"):
        (trio[role] / "README.md").write_text(f"---\nlicense: apache-2.0\n---\n# {role}\n")
    report = merge(trio, tmp_path / "merged", ratio=0.5)
    card = ModelCard.load(tmp_path / "merged" / "README.md")
    assert card.data.base_model == ["cp", "chat", "base"] and card.data.license == "apache-2.0"
    assert {"chatgraft", "merge", "chat-vector"} <= set(card.data.tags)
    assert "cp + 0.5 * (chat - base)" in card.text and "apache-2.0" in card.text
    source_rows = [line for line in card.text.splitlines() if line.startswith(("| cp", "| chat", "| base"))]
    fingerprints = [row.split("`")[3] for row in source_rows]
    assert len(set(fingerprints)) == 3  # three different checkpoints, three fingerprints
    assert json.loads((tmp_path / "merged" / "merge_report.json").read_text())["ratio"] == report.ratio == 0.5
