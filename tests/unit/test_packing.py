"""Packing with `datasets`: EOS-joined blocks, cached Arrow files reused, streaming gives the same blocks."""
import itertools
import json
from pathlib import Path

import pytest
from datasets import Dataset
from transformers import AutoModelForCausalLM

from pipelines.config import CPParams, DataParams
from pipelines.corpus.stage import build_corpus
from pipelines.cp import continual_pretrain
from pipelines.training import pack_texts, text_dataset
from pipelines.training.throughput import training_flops_per_token
from tests.unit.merge_models import word_tokenizer
from tests.unit.test_cp import _upstream

TEXTS = ["the city of kato is oslo .", "what is the city of kato ?", "the city is oslo ."] * 7


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": text, "source": "web"}) + "\n" for text in TEXTS))
    return path


def test_documents_are_joined_with_eos_and_cut_into_full_blocks(corpus_file: Path, tmp_path: Path) -> None:
    tokenizer = word_tokenizer()
    packed = pack_texts(tokenizer, text_dataset(corpus_file, cache_dir=tmp_path / "cache"), 8)
    stream = list(itertools.chain.from_iterable(
        tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for text in TEXTS))
    assert [row["input_ids"] for row in packed] == [stream[i:i + 8] for i in range(0, len(stream) - 7, 8)]
    assert all(row["labels"] == row["input_ids"] for row in packed)
    assert packed.column_names == ["input_ids", "labels"]  # the jsonl's other keys are not carried along


def test_packed_text_is_cached_by_fingerprint(corpus_file: Path, tmp_path: Path) -> None:
    tokenizer = word_tokenizer()
    first = pack_texts(tokenizer, text_dataset(corpus_file, cache_dir=tmp_path / "cache"), 8)
    again = pack_texts(tokenizer, text_dataset(corpus_file, cache_dir=tmp_path / "cache"), 8)
    other = pack_texts(tokenizer, text_dataset(corpus_file, cache_dir=tmp_path / "cache"), 4)
    assert first.cache_files and again.cache_files == first.cache_files  # memory-mapped Arrow, read again
    assert other.cache_files != first.cache_files  # another block size is another cache entry


def test_streaming_yields_the_same_blocks(corpus_file: Path) -> None:
    tokenizer = word_tokenizer()
    streamed = pack_texts(tokenizer, text_dataset(corpus_file, streaming=True), 8)
    mapped = pack_texts(tokenizer, Dataset.from_dict({"text": TEXTS}), 8)
    assert [row["input_ids"] for row in streamed] == mapped["input_ids"]


def test_bad_text_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text('{"body": "no text key"}\n')
    with pytest.raises(ValueError, match=r"rows\.jsonl: rows have no 'text' key"):
        text_dataset(tmp_path / "rows.jsonl")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        text_dataset(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="do not fill one block of 512"):
        pack_texts(word_tokenizer(), Dataset.from_dict({"text": TEXTS[:2]}), 512)


def test_cp_trains_on_a_stream(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    build_corpus(DataParams(source_entities=4, target_entities=4), corpus, tmp_path / "corpus.json")
    params = CPParams(steps=5, batch_size=4, block_size=16, learning_rate=1e-2, save_every=0, streaming=True,
                      peak_tflops=0.001)  # a made-up peak: MFU is figured on CPU too
    continual_pretrain(params=params, corpus_dir=corpus, upstream_dir=_upstream(tmp_path, corpus),
                       out_dir=tmp_path / "cp", metrics_path=tmp_path / "cp.json", curve_csv=tmp_path / "cp.csv",
                       checkpoint_dir=tmp_path / "checkpoints")
    metrics = json.loads((tmp_path / "cp.json").read_text())
    assert metrics["steps"] == 5 and metrics["tokens_per_second"] > 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "cp")
    expected_mfu = metrics["tokens_per_second"] * training_flops_per_token(model, 16) / 1e9
    assert metrics["mfu"] == pytest.approx(expected_mfu)
    assert (tmp_path / "cp" / "model.safetensors").exists()
