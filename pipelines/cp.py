"""The `cp` stage: full-parameter continual pretraining of the base on the target corpus."""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

from transformers import (
    AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, default_data_collator,
    set_seed,
)

from pipelines.atomic import atomic_dir, write_json_atomic
from pipelines.config import CPParams
from pipelines.corpus.files import TRAIN, VALID
from pipelines.model_card import weights_fingerprint, write_model_card
from pipelines.layout import NEW_TOKENS
from pipelines.training import Checkpointing, TrainResult, pack_texts, text_dataset, train_causal_lm
from pipelines.training.checkpoints import clear_checkpoints
from pipelines.training.distributed import full_state_dict, is_main_process, save_model
from pipelines.training.lora import with_lora
from pipelines.training.new_tokens import extend_vocabulary, train_new_tokens
from pipelines.training.precision import checkpoint_dtype, master_dtype
from pipelines.upstream.manifest import read_upstream


@dataclass(frozen=True)
class CPResult:
    """Where the CP model went, and how training ended."""

    model_dir: Path
    train: TrainResult


def training_text_sha256(corpus_dir: Path) -> str:
    """sha256 of the training text, hashed as it streams by (the corpus may be larger than memory)."""
    with (corpus_dir / TRAIN).open("rb") as text:
        return hashlib.file_digest(text, "sha256").hexdigest()


def run_fingerprint(params: CPParams, text_sha256: str, base: Path) -> str:
    """What identifies a CP run: its params, its training text's sha256, and the base model's fingerprint."""
    digest = hashlib.sha256(params.model_dump_json().encode())
    digest.update(f"{text_sha256}:{weights_fingerprint(base)}".encode())
    return digest.hexdigest()


STREAM_SHUFFLE_BUFFER = 10_000  # blocks


def _extend_vocabulary(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, corpus_dir: Path,
                       params: CPParams) -> dict[str, dict]:
    """Train `params.new_tokens` tokens on the training text (streamed) and add them to tokenizer and model."""
    texts = (row["text"] for row in text_dataset(corpus_dir / TRAIN, streaming=True))
    tokens = train_new_tokens(tokenizer, texts, params.new_tokens, params.new_token_min_frequency)
    return extend_vocabulary(model, tokenizer, tokens)


def _describe(folder: Path, params: CPParams, base: Path, base_id: str | None, text_sha256: str, result: TrainResult,
              new_tokens: int) -> None:
    """The model card: the base (and its hub id, where known), the text (its sha256) and the run's recipe and
    figures."""
    write_model_card(folder, title="continually pretrained model", sources={"base": base}, hub_ids={"base": base_id},
                     tags=["continual-pretraining"],
                     made_by="The base model trained further on target-language text (chatgraft's cp stage).",
                     facts={"training text": f"`{TRAIN}`, sha256 `{text_sha256[:16]}`",
                            "weights trained": "LoRA, folded in" if params.lora else "all",
                            "steps x tokens a step": f"{result.steps} x {params.batch_size} x {params.block_size}",
                            "learning rate": params.learning_rate, "new tokens": new_tokens,
                            "train loss": f"{result.train_loss:.4f}",
                            "held-out loss": "n/a" if result.eval_loss is None else f"{result.eval_loss:.4f}"})


def continual_pretrain(
    *, params: CPParams, corpus_dir: Path, upstream_dir: Path, out_dir: Path, metrics_path: Path, curve_csv: Path,
    checkpoint_dir: Path, cache_dir: Path | None = None, base_id: str | None = None,
) -> CPResult:
    """Train the base on packed target text, keep its tokenizer, and write metrics and the loss curve.

    Checkpoints go to `checkpoint_dir` every `save_every` steps; a rerun after a kill continues from the last
    complete one, and they are removed once the model is written. Tokenized text is cached in `cache_dir`.
    `base_id`: the hub repo id the base came from, for the model card.
    """
    base = read_upstream(upstream_dir).base
    tokenizer = AutoTokenizer.from_pretrained(base)
    config = AutoConfig.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=master_dtype(config, full_weights=params.lora is None))
    new_tokens = _extend_vocabulary(model, tokenizer, corpus_dir, params) if params.new_tokens else {}
    train = pack_texts(tokenizer, text_dataset(corpus_dir / TRAIN, params.streaming, cache_dir), params.block_size)
    if params.streaming:  # no global shuffle of a stream: blocks are drawn from a seeded buffer
        train = train.shuffle(seed=params.seed, buffer_size=STREAM_SHUFFLE_BUFFER)
    valid = pack_texts(tokenizer, text_dataset(corpus_dir / VALID, cache_dir=cache_dir), params.block_size)
    if params.lora is not None:
        set_seed(params.seed)  # LoRA's initial adapters are drawn: part of the recipe
        model = with_lora(model, params.lora)
    text_sha256 = training_text_sha256(corpus_dir)  # read once: the resume fingerprint and the model card
    checkpointing = Checkpointing(checkpoint_dir, params.save_every, run_fingerprint(params, text_sha256, base))
    result = train_causal_lm(model, train, params, default_data_collator, curve_csv, eval_examples=valid,
                             live_tracking=True, checkpointing=checkpointing,
                             fsdp=params.distributed.strategy == "fsdp")
    weights = full_state_dict(model)  # FSDP: every process gives its shards; None when each holds the whole model
    if not is_main_process():  # the other data-parallel processes only train
        return CPResult(model_dir=out_dir, train=result)
    with atomic_dir(out_dir, "continually pretrained model") as staging:
        if params.lora is not None:
            model = model.merge_and_unload()  # downstream stages, and the chat vector, need full weights
        save_model(model, staging, checkpoint_dtype(config), weights)  # the base's dtype, not float32 masters
        tokenizer.save_pretrained(staging)
        if new_tokens:
            write_json_atomic(staging / NEW_TOKENS, new_tokens)
        _describe(staging, params, base, base_id, text_sha256, result, len(new_tokens))
    clear_checkpoints(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)  # a DVC out, persisted between runs
    write_json_atomic(metrics_path, {
        "train_loss": result.train_loss,
        "valid_loss": result.eval_loss,
        "valid_perplexity": math.exp(result.eval_loss) if result.eval_loss is not None else None,
        "tokens_per_second": result.tokens_per_second,
        "mfu": result.mfu,  # null where the accelerator's peak is not known (CPU, unless cp.peak_tflops is set)
        "steps": result.steps,
        "resumed_from_step": result.resumed_from,
        "train_blocks": None if params.streaming else len(train),  # a stream's length is not known ahead
        "new_tokens": len(new_tokens),
    })
    return CPResult(model_dir=out_dir, train=result)
