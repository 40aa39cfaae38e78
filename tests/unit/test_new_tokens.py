"""Vocabulary extension: tokens trained on the target text, added whole-word, rows initialised from their pieces."""
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from pipelines.config import CPParams, LoraParams
from pipelines.cp import continual_pretrain
from pipelines.layout import NEW_TOKENS
from pipelines.training.new_tokens import extend_vocabulary, train_new_tokens
from tests.unit.merge_models import byte_bpe, save, tiny_model

BASE_TEXT = ["the city of the town is big and the cat is small ."] * 20
TARGET_TEXT = ["we eat kimchi and bibimbap with kimchi every day ."] * 50


def test_new_tokens_are_word_initial_pieces_of_the_target_text() -> None:
    tokens = train_new_tokens(byte_bpe(BASE_TEXT), TARGET_TEXT, count=6)
    assert len(tokens) == 6 and " kimchi" in tokens
    assert all(token.startswith(" ") for token in tokens)  # a word-inner piece would cut other words


def test_new_rows_start_as_the_mean_of_their_pieces() -> None:
    tokenizer = byte_bpe(BASE_TEXT)
    model = tiny_model(len(tokenizer))
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    mapping = extend_vocabulary(model, tokenizer, [" kimchi"])
    new_id, pieces = mapping[" kimchi"]["id"], mapping[" kimchi"]["pieces"]
    assert len(pieces) > 1 and new_id == len(tokenizer) - 1
    assert tokenizer("we eat kimchi", add_special_tokens=False)["input_ids"][-1] == new_id  # one token now
    assert tokenizer.decode(tokenizer("we eat kimchi")["input_ids"]) == "we eat kimchi"
    assert torch.allclose(model.get_input_embeddings().weight[new_id], before_in[pieces].mean(0))
    assert torch.allclose(model.get_output_embeddings().weight[new_id], before_out[pieces].mean(0))
    assert torch.equal(model.get_input_embeddings().weight[:new_id], before_in)  # old rows untouched


def test_cp_extends_the_vocabulary_and_records_the_mapping(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("train.jsonl", "valid.jsonl"):
        (corpus / name).write_text("".join(json.dumps({"text": text}) + "\n" for text in TARGET_TEXT))
    tokenizer = byte_bpe(BASE_TEXT)
    save(tiny_model(len(tokenizer)), tokenizer, tmp_path / "upstream" / "base")
    (tmp_path / "upstream" / "upstream.json").write_text(json.dumps({"base": "base", "chat": "base"}))
    params = CPParams(steps=2, batch_size=2, block_size=16, learning_rate=1e-3, save_every=0, new_tokens=4)
    continual_pretrain(params=params, corpus_dir=corpus, upstream_dir=tmp_path / "upstream", out_dir=tmp_path / "cp",
                       metrics_path=tmp_path / "cp.json", curve_csv=tmp_path / "cp.csv",
                       checkpoint_dir=tmp_path / "checkpoints")
    mapping = json.loads((tmp_path / "cp" / NEW_TOKENS).read_text())
    extended = AutoTokenizer.from_pretrained(tmp_path / "cp")
    assert len(mapping) == 4 and len(extended) == len(tokenizer) + 4
    assert all(extended.convert_tokens_to_ids(token) == row["id"] for token, row in mapping.items())
    assert json.loads((tmp_path / "cp.json").read_text())["new_tokens"] == 4


def test_lora_with_new_tokens_must_train_the_embeddings() -> None:
    with pytest.raises(ValueError, match="train_embeddings"):
        CPParams(steps=1, learning_rate=1e-3, new_tokens=8, lora=LoraParams())
