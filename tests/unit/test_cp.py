"""Continual pretraining with LoRA: only the adapted layers change, folded into full weights for the next stages."""
import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import default_data_collator

from pipelines.atomic import read_jsonl
from pipelines.config import CPParams, DataParams, LoraParams
from pipelines.corpus.files import TRAIN, VALID
from pipelines.corpus.stage import build_corpus
from pipelines.cp import continual_pretrain, run_fingerprint, training_text_sha256
from pipelines.training import pack_texts, train_causal_lm
from tests.unit.merge_models import save, tiny_model, word_tokenizer


def _upstream(root: Path, corpus: Path, dtype: torch.dtype = torch.float32) -> Path:
    texts = [row["text"] for name in (TRAIN, VALID) for row in read_jsonl(corpus / name)]
    tokenizer = word_tokenizer(texts)
    save(tiny_model(len(tokenizer)).to(dtype), tokenizer, root / "upstream" / "base")
    (root / "upstream" / "upstream.json").write_text(json.dumps({"base": "base", "chat": "base"}))
    return root / "upstream"


def test_lora_cp_changes_only_adapted_layers(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    build_corpus(DataParams(source_entities=4, target_entities=4), corpus, tmp_path / "corpus.json")
    upstream = _upstream(tmp_path, corpus)
    params = CPParams(steps=6, batch_size=4, block_size=16, learning_rate=1e-2, save_every=0,
                      gradient_checkpointing=True, lora=LoraParams(rank=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    runs = []
    for state in (1, 2):  # the adapters' initial values are drawn from the params' seed, whatever came before
        torch.manual_seed(state)
        continual_pretrain(params=params, corpus_dir=corpus, upstream_dir=upstream,
                           out_dir=tmp_path / f"cp-{state}", metrics_path=tmp_path / "cp.json",
                           curve_csv=tmp_path / "cp.csv", checkpoint_dir=tmp_path / "checkpoints")
        runs.append(load_file(tmp_path / f"cp-{state}" / "model.safetensors"))
    base, cp = load_file(upstream / "base" / "model.safetensors"), runs[0]
    assert cp.keys() == base.keys()  # full weights, no adapter tensors
    changed = {name for name in base if not torch.equal(base[name], cp[name])}
    assert changed and all(name.endswith(("q_proj.weight", "v_proj.weight")) for name in changed)
    assert all(torch.equal(cp[name], runs[1][name]) for name in changed)
    assert json.loads((tmp_path / "cp.json").read_text())["steps"] == 6


def test_gradient_checkpointing_is_switched_on_by_params(tmp_path: Path) -> None:
    tokenizer = word_tokenizer()
    model = tiny_model(len(tokenizer))
    examples = pack_texts(tokenizer, Dataset.from_dict({"text": ["the city of kato is oslo ."] * 20}), 8)
    params = CPParams(steps=2, batch_size=2, block_size=8, learning_rate=1e-3, gradient_checkpointing=True)
    assert not model.is_gradient_checkpointing
    train_causal_lm(model, examples, params, default_data_collator, tmp_path / "curve.csv")
    assert model.is_gradient_checkpointing


def test_fsdp_on_cpu_is_refused_with_the_key_to_change(tmp_path: Path) -> None:
    tokenizer = word_tokenizer()
    examples = pack_texts(tokenizer, Dataset.from_dict({"text": ["the city of kato is oslo ."] * 20}), 8)
    params = CPParams(steps=2, batch_size=2, block_size=8, learning_rate=1e-3)
    with pytest.raises(ValueError, match="cp.distributed.strategy fsdp needs CUDA GPUs"):
        train_causal_lm(tiny_model(len(tokenizer)), examples, params, default_data_collator, tmp_path / "c.csv",
                        fsdp=True)


def test_held_out_loss_is_evaluated_every_eval_every_steps(tmp_path: Path) -> None:
    tokenizer = word_tokenizer()
    examples = pack_texts(tokenizer, Dataset.from_dict({"text": ["the city of kato is oslo ."] * 20}), 8)
    params = CPParams(steps=6, batch_size=2, block_size=8, learning_rate=1e-3, eval_every=3)
    train_causal_lm(tiny_model(len(tokenizer)), examples, params, default_data_collator, tmp_path / "curve.csv",
                    eval_examples=examples)
    rows = [line.split(",") for line in (tmp_path / "curve.csv").read_text().splitlines()[1:]]
    assert [int(row[0]) for row in rows if row[2]] == [3, 6]


def test_bf16_base_trains_on_float32_masters_and_is_saved_in_bf16(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    build_corpus(DataParams(source_entities=4, target_entities=4), corpus, tmp_path / "corpus.json")
    upstream = _upstream(tmp_path, corpus, dtype=torch.bfloat16)
    params = CPParams(steps=5, batch_size=4, block_size=16, learning_rate=3e-5, save_every=0)
    continual_pretrain(params=params, corpus_dir=corpus, upstream_dir=upstream, out_dir=tmp_path / "cp",
                       metrics_path=tmp_path / "cp.json", curve_csv=tmp_path / "cp.csv",
                       checkpoint_dir=tmp_path / "checkpoints")
    base, cp = load_file(upstream / "base" / "model.safetensors"), load_file(tmp_path / "cp" / "model.safetensors")
    assert {tensor.dtype for tensor in cp.values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "cp" / "config.json").read_text())["dtype"] == "bfloat16"
    # small steps add up in float32 and show after rounding to bf16 (measured 0.72); stepping the bf16 weights
    # themselves loses most of them to rounding (measured 0.29)
    changed = sum(int((base[n] != cp[n]).sum()) for n in base) / sum(t.numel() for t in base.values())
    assert changed > 0.5


def test_the_resume_fingerprint_follows_the_text_the_params_and_the_base(tmp_path: Path) -> None:
    corpus, base = tmp_path / "corpus", tmp_path / "base"
    corpus.mkdir()
    base.mkdir()
    (corpus / TRAIN).write_text('{"text": "a b c"}\n' * 1000)
    (base / "config.json").write_text("{}")
    (base / "model.safetensors").write_bytes(b"0" * 64)
    params = CPParams(steps=6, learning_rate=1e-3)
    first = run_fingerprint(params, training_text_sha256(corpus), base)
    assert run_fingerprint(params, training_text_sha256(corpus), base) == first
    assert run_fingerprint(params.model_copy(update={"steps": 7}), training_text_sha256(corpus), base) != first
    (base / "model.safetensors").write_bytes(b"0" * 65)
    assert run_fingerprint(params, training_text_sha256(corpus), base) != first
    (base / "model.safetensors").write_bytes(b"0" * 64)
    with (corpus / TRAIN).open("a") as text:
        text.write('{"text": "d"}\n')
    assert run_fingerprint(params, training_text_sha256(corpus), base) != first
