"""`make bench-mfu`: model FLOPs utilisation of CP training on a GPU, a ~1B Llama in bf16 with packing and SDPA.

The training path is the cp stage's (float32 master weights under bf16 autocast, `pack_texts`, `train_causal_lm`,
its throughput meter); only the model is built from a config (TinyLlama-1.1B's shape, random weights of a bf16
checkpoint) and the text is random words, since no hub is reachable. The first steps are a warm-up (CUDA kernels
picked, memory pools grown), left out of the measured figure.
MFU = model FLOPs per token x tokens/s / the GPU's peak (pipelines/training/throughput.py). Goal: >= 45%.
`--preset tiny --peak-tflops X` runs the same on CPU with a made-up peak, to check the benchmark itself.
"""
from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, default_data_collator

from benchmarks.synthetic_llama import llama_config, word_tokenizer
from pipelines.config import CPParams
from pipelines.training import pack_texts, train_causal_lm
from pipelines.training.distributed import under_launcher
from pipelines.training.precision import master_dtype
from pipelines.training.throughput import training_flops_per_token
from pipelines.upstream.tokenizer import SPECIAL_TOKENS

PRESETS = {  # name: llama_config's arguments
    "1b": {"layers": 22, "hidden": 2048, "intermediate": 5632, "heads": 32, "kv_heads": 4, "vocab": 32000},
    "tiny": {"layers": 2, "hidden": 64, "intermediate": 128, "heads": 4, "kv_heads": 2, "vocab": 512},
}
GOAL = 0.45


def random_documents(vocab: int, tokens: int, seed: int = 0) -> list[str]:
    """Documents of random words, 50 to 2,000 words long, about `tokens` words in all."""
    rng, documents, total = random.Random(seed), [], 0
    while total < tokens:
        length = rng.randint(50, 2000)
        documents.append(" ".join(f"w{rng.randrange(vocab - len(SPECIAL_TOKENS))}" for _ in range(length)))
        total += length
    return documents


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="1b")
    parser.add_argument("--steps", type=int, default=30, help="measured optimizer steps (after the warm-up)")
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8, help="sequences a step")
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--fsdp", action="store_true", help="shard with FSDP2 as cp.distributed.strategy fsdp does "
                        "(launch under torchrun: python -m torch.distributed.run --nproc_per_node=N -m benchmarks.mfu)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak of the device; default: by GPU name")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and args.peak_tflops is None:
        parser.error("MFU is measured on a CUDA GPU; on CPU give --preset tiny and a made-up --peak-tflops")
    if args.fsdp and not under_launcher():
        parser.error("--fsdp runs under torchrun: python -m torch.distributed.run --nproc_per_node=N -m benchmarks.mfu")
    config = llama_config(**PRESETS[args.preset])
    tokenizer = word_tokenizer(config.vocab_size)
    steps = args.warmup_steps + args.steps
    documents = random_documents(config.vocab_size, steps * args.batch_size * args.block_size)
    blocks = pack_texts(tokenizer, Dataset.from_dict({"text": documents}), args.block_size)
    model = AutoModelForCausalLM.from_config(config, dtype=master_dtype(config, full_weights=True),
                                             attn_implementation="sdpa")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    flops_per_token = training_flops_per_token(model, args.block_size)
    print(f"{device}; {sum(p.numel() for p in model.parameters()) / 1e6:,.1f} M parameters, "
          f"{flops_per_token / 1e9:.3g} GFLOP a token; {len(blocks)} packed "
          f"blocks of {args.block_size}, {args.batch_size} a step", flush=True)
    params = CPParams(steps=args.warmup_steps + args.steps, batch_size=args.batch_size, block_size=args.block_size,
                      learning_rate=1e-4, save_every=0, gradient_checkpointing=args.gradient_checkpointing,
                      peak_tflops=args.peak_tflops)
    with tempfile.TemporaryDirectory(prefix="chatgraft-bench-mfu-") as work:
        result = train_causal_lm(model, blocks, params, default_data_collator, Path(work) / "curve.csv",
                                 fsdp=args.fsdp)
    if result.mfu is None:
        raise SystemExit(f"no peak known for {device}: give --peak-tflops")
    measured = [log for log in result.history if log["step"] > args.warmup_steps]
    # each log covers as many steps of as many tokens: over the measured logs, rates average harmonically
    tokens_per_second = len(measured) / sum(1 / log["tokens_per_second"] for log in measured)
    mfu = len(measured) / sum(1 / log["mfu"] for log in measured)
    print(f"whole run: {result.steps} steps, {result.tokens_per_second:,.0f} tokens/s, MFU {result.mfu:.1%}")
    print(f" measured: steps {args.warmup_steps + 1}-{result.steps}, {tokens_per_second:,.0f} tokens/s, "
          f"{tokens_per_second * flops_per_token / 1e12:.3g} model TFLOP/s, MFU {mfu:.1%}", flush=True)
    if torch.cuda.is_available():
        print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print(f"MFU {mfu:.1%} [goal >= {GOAL:.0%}]")


if __name__ == "__main__":
    main()
