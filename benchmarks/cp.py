"""`make bench-cp`: tokens/s of packed training against padded batches of the same documents.

Same tiny model (the default world's shape), same documents, same batch size and steps, same run; tokens are
real ones (padding not counted). The default world's CP sentences are all about 8 tokens long, unlike real
documents, so they are grouped into documents of 1 to `--max-sentences` sentences (log-uniform lengths, seeded),
the spread that makes padding costly on real corpora. Goal: packed >= 2x padded.
"""
from __future__ import annotations

import argparse
import math
import random
import tempfile
from pathlib import Path

from datasets import Dataset
from transformers import DataCollatorForLanguageModeling, default_data_collator

from pipelines.atomic import read_jsonl
from pipelines.config import CPParams, DataParams, TinyModelParams
from pipelines.corpus.files import TRAIN
from pipelines.corpus.stage import build_corpus
from pipelines.training import pack_texts, train_causal_lm
from pipelines.upstream.tiny import build_tiny_llama
from pipelines.upstream.tokenizer import build_word_tokenizer


def _documents(sentences: list[str], max_sentences: int, seed: int = 0) -> list[str]:
    """Consecutive sentences joined into documents whose sentence counts are log-uniform in [1, max_sentences]."""
    rng, documents, start = random.Random(seed), [], 0
    while start < len(sentences):
        count = round(math.exp(rng.uniform(0, math.log(max_sentences))))
        documents.append(" ".join(sentences[start:start + count]))
        start += count
    return documents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per variant")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--max-sentences", type=int, default=32, help="longest document, in corpus sentences")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chatgraft-bench-cp-") as work:
        root = Path(work)
        build_corpus(DataParams(), root / "corpus", root / "corpus.json")
        documents = _documents([row["text"] for row in read_jsonl(root / "corpus" / TRAIN)], args.max_sentences)
        tokenizer = build_word_tokenizer(documents)
        params = CPParams(steps=args.steps, batch_size=args.batch_size, block_size=args.block_size,
                          learning_rate=1e-3, save_every=0)
        packed = pack_texts(tokenizer, Dataset.from_dict({"text": documents}), args.block_size)
        encoded = tokenizer(documents, add_special_tokens=False)["input_ids"]
        padded = [{"input_ids": ids + [tokenizer.eos_token_id], "attention_mask": [1] * (len(ids) + 1)}
                  for ids in encoded]
        lengths = sorted(len(ids) + 1 for ids in encoded)
        print(f"{len(documents)} documents, tokens min {lengths[0]} median {lengths[len(lengths) // 2]} "
              f"max {lengths[-1]}; blocks of {args.block_size}")
        variants = {
            "packed": (packed, default_data_collator),
            "padded": (padded, DataCollatorForLanguageModeling(tokenizer, mlm=False)),
        }
        speed = {}
        for name, (examples, collator) in variants.items():
            model = build_tiny_llama(TinyModelParams(), tokenizer, context=args.block_size)
            result = train_causal_lm(model, examples, params, collator, root / f"{name}.csv")
            speed[name] = result.tokens_per_second
            print(f"{name:>7s}: {result.tokens_per_second:10.0f} real tokens/s ({len(examples)} examples, "
                  f"{args.steps} steps of {args.batch_size})", flush=True)
    print(f"packed / padded: {speed['packed'] / speed['padded']:.1f}x [goal >= 2x]")


if __name__ == "__main__":
    main()
