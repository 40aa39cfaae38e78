"""The chat-vector merge against a plain-torch reference, its row policies, and its errors on bad input."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from pipelines.config import MergeSettings
from pipelines.merge import CheckpointError, merge_chat_vector
from pipelines.upstream.tokenizer import as_chat_tokenizer, build_word_tokenizer

VOCAB_MATRICES = ("model.embed_tokens.weight", "lm_head.weight")


def _save(model: LlamaForCausalLM, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _perturbed(model: LlamaForCausalLM, seed: int, **config_changes) -> LlamaForCausalLM:
    config = LlamaConfig(**{**model.config.to_dict(), **config_changes})
    torch.manual_seed(seed)
    other = LlamaForCausalLM(config)
    if not config_changes:
        other.load_state_dict({k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()})
    return other


@pytest.fixture
def trio(tmp_path: Path) -> dict[str, Path]:
    tokenizer = build_word_tokenizer(["the city of kato is oslo .", "what is the city of kato ?"])
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                        tie_word_embeddings=False))
    chat_tokenizer = as_chat_tokenizer(AutoTokenizer.from_pretrained(_save(base, tokenizer, tmp_path / "base")))
    return {
        "base": tmp_path / "base",
        "chat": _save(_perturbed(base, 1), chat_tokenizer, tmp_path / "chat"),
        "cp": _save(_perturbed(base, 2), tokenizer, tmp_path / "cp"),
    }


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def _merge(trio: dict[str, Path], out: Path, ratio: float = 0.7, rows: str = "overlap") -> None:
    merge_chat_vector(trio["base"], trio["chat"], trio["cp"], out, ratio, MergeSettings(embedding_rows=rows),
                      out.parent / f"{out.name}.json")


def test_overlap_equals_reference_merge(trio: dict[str, Path], tmp_path: Path) -> None:
    _merge(trio, tmp_path / "merged")
    base, chat, cp, merged = (_weights(p) for p in (trio["base"], trio["chat"], trio["cp"], tmp_path / "merged"))
    assert merged.keys() == cp.keys()
    for name in cp:
        reference = (cp[name].float() + 0.7 * (chat[name].float() - base[name].float())).to(cp[name].dtype)
        assert torch.equal(merged[name], reference), name


def test_specials_policy_moves_only_special_token_rows(trio: dict[str, Path], tmp_path: Path) -> None:
    _merge(trio, tmp_path / "merged", rows="specials")
    cp, merged = _weights(trio["cp"]), _weights(tmp_path / "merged")
    specials = sorted(i for i, t in AutoTokenizer.from_pretrained(trio["chat"]).added_tokens_decoder.items()
                      if t.special)
    for name in VOCAB_MATRICES:
        changed = (merged[name] != cp[name]).any(dim=1).nonzero().flatten().tolist()
        assert changed == specials, name
    assert not torch.equal(merged["model.norm.weight"], cp["model.norm.weight"])  # body tensors get the delta


def test_skip_policy_leaves_vocabulary_matrices_as_cp(trio: dict[str, Path], tmp_path: Path) -> None:
    _merge(trio, tmp_path / "merged", rows="skip")
    cp, merged = _weights(trio["cp"]), _weights(tmp_path / "merged")
    assert all(torch.equal(merged[name], cp[name]) for name in VOCAB_MATRICES)


def test_output_is_a_chat_model(trio: dict[str, Path], tmp_path: Path) -> None:
    _merge(trio, tmp_path / "merged")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(trio["chat"]).chat_template
    assert tokenizer.eos_token == "<|end|>"
    assert LlamaForCausalLM.from_pretrained(tmp_path / "merged").config.eos_token_id == tokenizer.eos_token_id
    report = (tmp_path / "merged.json").read_text()
    assert '"delta_norm"' in report and '"relative_change"' in report


def test_shape_mismatch_names_the_tensor_and_writes_nothing(trio: dict[str, Path], tmp_path: Path) -> None:
    wider = _perturbed(LlamaForCausalLM.from_pretrained(trio["base"]), 3, intermediate_size=48)
    _save(wider, AutoTokenizer.from_pretrained(trio["chat"]), trio["chat"])
    with pytest.raises(CheckpointError, match=r"tensor 'model\.layers\.0\.mlp\..*shapes differ: cp \(16, 32\), chat \(16, 48\)"):
        _merge(trio, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".merged")] == []


def test_missing_tensor_is_named(trio: dict[str, Path], tmp_path: Path) -> None:
    weights = _weights(trio["chat"])
    del weights["model.norm.weight"]
    save_file(weights, trio["chat"] / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"has no tensor 'model\.norm\.weight'"):
        _merge(trio, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_nan_in_the_result_is_refused(trio: dict[str, Path], tmp_path: Path) -> None:
    weights = _weights(trio["cp"])
    weights["model.norm.weight"][0] = float("nan")
    save_file(weights, trio["cp"] / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"tensor 'model\.norm\.weight': the merge produced NaN"):
        _merge(trio, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_corrupt_file_is_named(trio: dict[str, Path], tmp_path: Path) -> None:
    (trio["base"] / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"base/model\.safetensors: unreadable"):
        _merge(trio, tmp_path / "merged")
