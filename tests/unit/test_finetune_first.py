"""The paper's best path, CP -> FT -> + chat vector, on a hub-format pair (byte-level BPE base; its chat model adds
ChatML tokens, a template without generation markers and two end-of-turn ids): CP is fine-tuned with the chat
model's template and special tokens, then merged like CP is; the family's names, folders and metrics files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig

from pipelines.align.stage import curate_sft_set
from pipelines.align.tune import tune_on_sft_set
from pipelines.candidates import FINETUNED_PREFIX, candidate_dir, finetuned_merged_name, finetuned_merged_parts
from pipelines.config import AlignParams, MergeSettings, Params, TrainParams
from pipelines.layout import ALIGN_MANIFEST, NEW_TOKENS, Layout
from pipelines.leaderboard import candidate_names
from pipelines.merge.chat_vector import merge_chat_vector
from tests.unit.merge_models import perturbed, save, tiny_model, weights
from tests.unit.test_pair_check import hub_pair

CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]
SFT = [{"prompt": "what is the city of kato ?", "answer": "the city of kato is oslo .", "category": "city",
        "source": "expert"}] * 8


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The hub pair, a CP (the base moved, with a record of a token it added), CP fine-tuned with sft."""
    root = tmp_path_factory.mktemp("finetune-first")
    pair = hub_pair(root)
    cp_tokenizer = AutoTokenizer.from_pretrained(pair["base"])
    save(perturbed(tiny_model(len(cp_tokenizer)), 2), cp_tokenizer, root / "cp")
    (root / "cp" / NEW_TOKENS).write_text(json.dumps({"kato": {"id": 5, "pieces": [5]}}))
    (root / "sft.jsonl").write_text("".join(json.dumps(row) + "\n" for row in SFT))
    params = AlignParams(train=TrainParams(steps=4, batch_size=4, block_size=64, learning_rate=1e-2))
    curate_sft_set(params, root / "sft.jsonl", root / "sft", root / "curation.json")
    tune_on_sft_set(method="sft", params=params, sft_dir=root / "sft", source_name="cp", source_dir=root / "cp",
                    out_dir=root / "finetuned", metrics_path=root / "finetune.json", curve_csv=root / "curve.csv",
                    template_from=pair["chat"])
    return {**pair, "cp": root / "cp", "finetuned": root / "finetuned", "metrics": root / "finetune.json"}


def test_cp_is_fine_tuned_in_the_chat_models_format(finetuned: dict[str, Path]) -> None:
    out, cp = finetuned["finetuned"], finetuned["cp"]
    tokenizer, chat = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(finetuned["chat"])
    assert tokenizer.chat_template == chat.chat_template and tokenizer.eos_token == chat.eos_token
    assert all(token in tokenizer.get_vocab() for token in CHAT_TOKENS)
    tuned, before = weights(out), weights(cp)
    rows = tuned["model.embed_tokens.weight"]
    assert rows.shape[0] == len(tokenizer) == before["model.embed_tokens.weight"].shape[0] + 2
    # the adapters are folded in and moved the attention; the old rows stay CP's (only the new tokens' train)
    assert not any("lora" in name for name in tuned)
    assert not torch.equal(tuned["model.layers.0.self_attn.q_proj.weight"],
                           before["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(rows[: len(before["model.embed_tokens.weight"])], before["model.embed_tokens.weight"])
    assert json.loads((out / ALIGN_MANIFEST).read_text()) == {"method": "sft", "from": "cp", "examples": 1}
    assert json.loads((out / NEW_TOKENS).read_text()) == json.loads((cp / NEW_TOKENS).read_text())
    assert json.loads(finetuned["metrics"].read_text())["steps"] == 4


def test_the_chat_vector_is_added_to_the_fine_tuned_cp(finetuned: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "merged"
    merge_chat_vector(base=finetuned["base"], chat=finetuned["chat"], cp=finetuned["finetuned"], out=out, ratio=1.0,
                      settings=MergeSettings(embedding_rows="specials"))
    merged, tuned = weights(out), weights(finetuned["finetuned"])
    base, chat = weights(finetuned["base"]), weights(finetuned["chat"])
    name = "model.layers.1.mlp.down_proj.weight"
    assert torch.allclose(merged[name], tuned[name] + chat[name] - base[name], atol=1e-6)
    tokenizer = AutoTokenizer.from_pretrained(out)
    new_rows = tokenizer.convert_tokens_to_ids(CHAT_TOKENS)  # the base has none: the fine-tuned rows, unmoved
    assert torch.equal(merged["model.embed_tokens.weight"][new_rows], tuned["model.embed_tokens.weight"][new_rows])
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith(
        "<|im_start|>user")
    chat_tokenizer = AutoTokenizer.from_pretrained(finetuned["chat"])  # both end-of-turn ids, as the chat model's
    end_ids = [chat_tokenizer.convert_tokens_to_ids("<|im_end|>"), chat_tokenizer.eos_token_id]
    assert GenerationConfig.from_pretrained(out).eos_token_id == end_ids


def test_the_family_is_named_foldered_and_ranked(tmp_path: Path) -> None:
    name = finetuned_merged_name("sft", "1.0")
    assert name == "finetuned-sft-merged-1.0" and name.startswith(FINETUNED_PREFIX)
    assert finetuned_merged_parts(name) == ("sft", "1.0")
    layout = Layout(tmp_path)
    assert candidate_dir(layout, name) == tmp_path / "models" / "finetuned-merged" / "sft-alpha-1.0"
    assert layout.eval_metrics(name) == tmp_path / "metrics" / "eval" / "finetuned" / f"{name}.json"
    with pytest.raises(ValueError, match="finetuned-<method>-merged-<ratio>"):
        candidate_dir(layout, "finetuned-sft")
    params = Params.model_validate({"finetune": {"methods": ["sft"], "ratios": [0.5, 1.0]}})
    assert candidate_names(params)[-2:] == ["finetuned-sft-merged-0.5", "finetuned-sft-merged-1.0"]
    assert not any(n.startswith(FINETUNED_PREFIX) for n in candidate_names(Params.model_validate(
        {"finetune": {"methods": []}})))
