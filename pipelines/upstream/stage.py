"""The `upstream` stage: the base/chat pair the chat vector is taken from.

In a generated world it builds the world's tokenizer (word-level, or byte-level BPE in the language world), pretrains a tiny Llama `base` from scratch and fine-tunes it into
`chat`. With real models (`upstream.base_path`, `upstream.chat_path`) it only checks and records the local paths.
Either way it checks that the pair can be merged (reports/upstream.json) and writes a manifest that later stages
read through `read_upstream`.
"""
from __future__ import annotations

from pathlib import Path

from datasets import Dataset
from transformers import AutoTokenizer, DataCollatorForSeq2Seq, default_data_collator, set_seed

from pipelines.atomic import atomic_dir, read_jsonl, write_json_atomic, write_text_atomic
from pipelines.config import UpstreamParams
from pipelines.corpus.files import UPSTREAM_CHAT, UPSTREAM_TARGET_TEXT, UPSTREAM_TEXT
from pipelines.merge.plan import read_config
from pipelines.training import assistant_only_examples, pack_texts, train_causal_lm
from pipelines.upstream.manifest import MANIFEST, UpstreamPair, read_upstream
from pipelines.upstream.pair_check import PairReport, check_pair
from pipelines.upstream.tiny import build_tiny_llama
from pipelines.upstream.tokenizer import as_chat_tokenizer, build_byte_bpe_tokenizer, build_word_tokenizer

def record_real_pair(base: Path, chat: Path, out_dir: Path) -> UpstreamPair:
    """Write a manifest pointing at the real base/chat checkpoints (checked by `check_upstream_pair`)."""
    with atomic_dir(out_dir, "upstream pair") as staging:
        write_json_atomic(staging / MANIFEST, {"base": str(base), "chat": str(chat),
                                               "model_type": read_config(base).get("model_type")})
    return UpstreamPair(base=base, chat=chat)


def check_upstream_pair(base: Path, chat: Path, report_path: Path) -> PairReport:
    """Check the pair, write the report to `report_path`, and refuse a pair that cannot merge, every reason listed."""
    report = check_pair({"base": base, "chat": chat})
    write_text_atomic(report_path, report.as_json())
    if report.problems:
        raise ValueError(f"upstream: base {base} and chat {chat} cannot be merged (report: {report_path}):\n- "
                         + "\n- ".join(report.problems))
    return report


def build_tiny_pair(params: UpstreamParams, world: str, corpus_dir: Path, out_dir: Path, metrics_path: Path,
                    plots_dir: Path) -> UpstreamPair:
    """Pretrain a tiny base on the source world's text, then chat-tune a copy of it on source chat data."""
    texts = [row["text"] for row in read_jsonl(corpus_dir / UPSTREAM_TEXT)]
    conversations = [row["messages"] for row in read_jsonl(corpus_dir / UPSTREAM_CHAT)]
    said = texts + [m["content"] for c in conversations for m in c]
    tokenizer = build_word_tokenizer(said) if world == "domain" else build_byte_bpe_tokenizer(said, params.tiny.vocab_size)
    if (corpus_dir / UPSTREAM_TARGET_TEXT).exists():  # pretrained on, after the tokenizer was trained without it
        texts += [row["text"] for row in read_jsonl(corpus_dir / UPSTREAM_TARGET_TEXT)]
    set_seed(params.pretrain.seed)  # the initial weights are part of the recipe
    model = build_tiny_llama(params.tiny, tokenizer, context=max(params.pretrain.block_size, 256))

    with atomic_dir(out_dir, "upstream pair") as staging:
        pretrain = train_causal_lm(
            model, pack_texts(tokenizer, Dataset.from_dict({"text": texts}), params.pretrain.block_size), params.pretrain,
            default_data_collator, plots_dir / "upstream_pretrain_loss.csv",
        )
        model.save_pretrained(staging / "base")
        tokenizer.save_pretrained(staging / "base")

        chat_tokenizer = as_chat_tokenizer(AutoTokenizer.from_pretrained(staging / "base"))
        chat_tune = train_causal_lm(
            model, assistant_only_examples(chat_tokenizer, conversations), params.chat_tune,
            DataCollatorForSeq2Seq(chat_tokenizer, padding=True), plots_dir / "upstream_chat_loss.csv",
        )
        model.config.eos_token_id = chat_tokenizer.eos_token_id
        model.generation_config.eos_token_id = chat_tokenizer.eos_token_id
        model.save_pretrained(staging / "chat")
        chat_tokenizer.save_pretrained(staging / "chat")
        write_json_atomic(staging / MANIFEST, {"base": "base", "chat": "chat", "model_type": "llama"})

    write_json_atomic(metrics_path, {
        "pretrain": {"train_loss": pretrain.train_loss, "tokens_per_second": pretrain.tokens_per_second},
        "chat_tune": {"train_loss": chat_tune.train_loss, "tokens_per_second": chat_tune.tokens_per_second},
    })
    return read_upstream(out_dir)


def build_upstream(params: UpstreamParams, world: str, corpus_dir: Path, out_dir: Path, metrics_path: Path,
                   plots_dir: Path, report_path: Path) -> UpstreamPair:
    """Check and record the real pair when paths are given, else build and check the tiny pair."""
    if params.base_path and params.chat_path:  # set together or not at all (validated)
        base, chat = Path(params.base_path).resolve(), Path(params.chat_path).resolve()
        check_upstream_pair(base, chat, report_path)
        pair = record_real_pair(base, chat, out_dir)
        write_json_atomic(metrics_path, {})
        for curve in ("upstream_pretrain_loss.csv", "upstream_chat_loss.csv"):  # nothing trained: empty curves
            write_text_atomic(plots_dir / curve, "step,loss,eval_loss,learning_rate\n")
        return pair
    pair = build_tiny_pair(params, world, corpus_dir, out_dir, metrics_path, plots_dir)
    check_upstream_pair(pair.base, pair.chat, report_path)
    return pair
