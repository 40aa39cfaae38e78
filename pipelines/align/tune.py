"""LoRA fine-tuning of a merged model on a curated SFT set: plain SFT, or C-RLFT (class-conditioned, class-weighted)."""
from __future__ import annotations

from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, PreTrainedTokenizerBase, set_seed

from pipelines.align.conditioning import add_class_tokens, conditioned_template
from pipelines.align.curation import SftExample
from pipelines.atomic import atomic_dir, write_json_atomic
from pipelines.config import AlignParams
from pipelines.layout import ALIGN_MANIFEST
from pipelines.model_card import write_model_card
from pipelines.training import TrainResult, assistant_only_examples, train_causal_lm
from pipelines.padding import IGNORE_INDEX, with_pad_token
from pipelines.training.lora import with_lora
from pipelines.training.weighted import LOSS_WEIGHT, WeightedCollator


def _conversation(example: SftExample) -> list[dict[str, str]]:
    return [{"role": "user", "content": example.prompt}, {"role": "assistant", "content": example.answer}]


def best_class(weights: dict[str, float]) -> str:
    """The class with the highest loss weight: the condition generation uses."""
    return max(weights, key=weights.__getitem__)


def _c_rlft_examples(tokenizer: PreTrainedTokenizerBase, examples: list[SftExample],
                     weights: dict[str, float]) -> tuple[list[dict], list[int]]:
    """Add the class tokens and the conditioned template to `tokenizer`; each example conditioned on its class
    and carrying its class weight; also the ids of the class tokens."""
    unknown = sorted({e.source for e in examples} - set(weights))
    if unknown:
        raise ValueError(f"SFT examples of source classes {unknown} have no weight in align.class_weights "
                         f"{sorted(weights)}")
    tokens = add_class_tokens(tokenizer, list(weights))
    tokenizer.chat_template = conditioned_template(tokenizer.chat_template, tokens[best_class(weights)])
    rows = assistant_only_examples(tokenizer, [_conversation(e) for e in examples],
                                   [{"condition": tokens[e.source]} for e in examples])
    weighted = [{**row, LOSS_WEIGHT: weights[e.source]} for row, e in zip(rows, examples)]
    return weighted, tokenizer.convert_tokens_to_ids(list(tokens.values()))


def fit_to_block(rows: list[dict], block_size: int) -> list[dict]:
    """Rows cut to `block_size` tokens (as SFT trainers cut to a max length); a row left with no answer token to
    learn is dropped."""
    cut = [{k: (v[:block_size] if isinstance(v, list) else v) for k, v in row.items()} for row in rows]
    return [row for row in cut if any(label != IGNORE_INDEX for label in row["labels"])]


def align_model(method: str, params: AlignParams, examples: list[SftExample], merged_dir: Path, out_dir: Path,
                curve_csv: Path, manifest: dict) -> TrainResult:
    """Fine-tune LoRA adapters on `merged_dir` with `method` (sft | c-rlft), fold them in, and save full weights,
    the tokenizer (its chat template conditioned on the best class for c-rlft) and `manifest` (as align.json) to
    `out_dir`, atomically."""
    set_seed(params.train.seed)  # new embedding rows and LoRA's initial adapters are drawn: part of the recipe
    tokenizer = with_pad_token(AutoTokenizer.from_pretrained(merged_dir), merged_dir)
    if not tokenizer.chat_template:
        raise ValueError(f"{merged_dir}: the merged model's tokenizer has no chat template to fine-tune on")
    model = AutoModelForCausalLM.from_pretrained(merged_dir)
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True)
    if method == "c-rlft":
        rows, class_tokens = _c_rlft_examples(tokenizer, examples, params.class_weights)
        model.resize_token_embeddings(len(tokenizer))
        model = with_lora(model, params.lora, trainable_tokens=class_tokens)
        collator = WeightedCollator(collator)
    elif method == "sft":
        rows = assistant_only_examples(tokenizer, [_conversation(e) for e in examples])
        model = with_lora(model, params.lora)
    else:
        raise ValueError(f"unknown align method {method!r}: expected sft or c-rlft")
    rows = fit_to_block(rows, params.train.block_size)
    if not rows:
        raise ValueError(f"no SFT example keeps an answer token within align.train.block_size "
                         f"{params.train.block_size}")
    result = train_causal_lm(model, rows, params.train, collator, curve_csv, live_tracking=True)
    with atomic_dir(out_dir, "aligned model") as staging:
        model.merge_and_unload().save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_json_atomic(staging / ALIGN_MANIFEST, manifest)
        write_model_card(staging, title=f"aligned model ({method})", sources={"merged": merged_dir},
                         tags=["alignment", method, "lora"],
                         made_by="The best merged model fine-tuned on a small curated SFT set with LoRA adapters, "
                         "folded into full weights (chatgraft's align stage).",
                         facts={"method": method, "examples": manifest.get("examples", len(rows)),
                                "steps": result.steps, "learning rate": params.train.learning_rate,
                                "LoRA rank, alpha": f"{params.lora.rank}, {params.lora.alpha}",
                                "train loss": f"{result.train_loss:.4f}",
                                **({"class weights": params.class_weights} if method == "c-rlft" else {})})
    return result
