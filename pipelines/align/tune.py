"""The `align@<method>` and `finetune@<method>` stages: LoRA fine-tuning on the curated SFT set, of the best merged
model (align: CP + chat vector -> FT) or of CP itself before its merge (finetune: the paper's CP -> FT -> + chat
vector, merged by the `merge-finetuned` stages); plain SFT, or C-RLFT (class-conditioned, class-weighted). Each writes
the folded model with a manifest naming its source."""
from __future__ import annotations

import shutil
from pathlib import Path

from transformers import (
    AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, PreTrainedModel, PreTrainedTokenizerBase, set_seed,
)

from pipelines.align.conditioning import add_class_tokens, conditioned_template
from pipelines.align.curation import SftExample
from pipelines.align.sft_set import SFT_FILE, read_sft_set
from pipelines.atomic import atomic_dir, write_json_atomic
from pipelines.config import AlignParams
from pipelines.layout import ALIGN_MANIFEST, NEW_TOKENS
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


def _tokenizer(model_dir: Path, template_from: Path | None) -> tuple[PreTrainedTokenizerBase, list[str]]:
    """`model_dir`'s tokenizer, with the chat template, end of turn and special tokens of the model at
    `template_from` when given (a CP model has none of its own); also the tokens it gained."""
    from pipelines.merge.vocabulary import load_tokenizer, merged_tokenizer  # the merge's rule: one way to do it

    tokenizer, added = AutoTokenizer.from_pretrained(model_dir), []
    if template_from is not None:
        tokenizer, added = merged_tokenizer(tokenizer, load_tokenizer(template_from))
    if not tokenizer.chat_template:
        raise ValueError(f"{model_dir}: the tokenizer has no chat template to fine-tune on")
    return with_pad_token(tokenizer, model_dir), added


def _fit_embeddings(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Grow the embedding matrices to the tokenizer (new rows at the mean, transformers' default); never shrink them:
    hub models often carry padding rows past their tokenizer."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))


def align_model(method: str, params: AlignParams, examples: list[SftExample], model_dir: Path, out_dir: Path,
                curve_csv: Path, manifest: dict, template_from: Path | None = None) -> TrainResult:
    """Fine-tune LoRA adapters on `model_dir` with `method` (sft | c-rlft), fold them in, and save full weights,
    the tokenizer (its chat template conditioned on the best class for c-rlft, or taken from `template_from`) and
    `manifest` (as align.json) to `out_dir`, atomically. Tokens the tokenizer gains (class tokens, the chat model's
    special tokens) get trainable embedding rows; CP's record of the tokens it added (new_tokens.json) is kept."""
    set_seed(params.train.seed)  # new embedding rows and LoRA's initial adapters are drawn: part of the recipe
    tokenizer, added = _tokenizer(model_dir, template_from)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True)
    if method == "c-rlft":
        rows, class_tokens = _c_rlft_examples(tokenizer, examples, params.class_weights)
        collator = WeightedCollator(collator)
    elif method == "sft":
        rows, class_tokens = assistant_only_examples(tokenizer, [_conversation(e) for e in examples]), []
    else:
        raise ValueError(f"unknown align method {method!r}: expected sft or c-rlft")
    _fit_embeddings(model, tokenizer)
    model = with_lora(model, params.lora, trainable_tokens=class_tokens + tokenizer.convert_tokens_to_ids(added))
    rows = fit_to_block(rows, params.train.block_size)
    if not rows:
        raise ValueError(f"no SFT example keeps an answer token within align.train.block_size "
                         f"{params.train.block_size}")
    result = train_causal_lm(model, rows, params.train, collator, curve_csv, live_tracking=True)
    source = manifest.get("from", model_dir.name)
    with atomic_dir(out_dir, "fine-tuned model") as staging:
        model.merge_and_unload().save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if (model_dir / NEW_TOKENS).exists():  # their ids are unchanged: a merge still finds their pieces
            shutil.copy2(model_dir / NEW_TOKENS, staging / NEW_TOKENS)
        write_json_atomic(staging / ALIGN_MANIFEST, manifest)
        write_model_card(staging, title=f"{source} fine-tuned with {method}", sources={source: model_dir},
                         tags=["alignment", method, "lora"],
                         made_by=f"The {source} model fine-tuned on a small curated SFT set with LoRA adapters, "
                         "folded into full weights (chatgraft's align stages).",
                         facts={"method": method, "examples": manifest.get("examples", len(rows)),
                                "steps": result.steps, "learning rate": params.train.learning_rate,
                                "LoRA rank, alpha": f"{params.lora.rank}, {params.lora.alpha}",
                                "train loss": f"{result.train_loss:.4f}",
                                **({"class weights": params.class_weights} if method == "c-rlft" else {})})
    return result


def tune_on_sft_set(*, method: str, params: AlignParams, sft_dir: Path, source_name: str, source_dir: Path,
                    out_dir: Path, metrics_path: Path, curve_csv: Path, template_from: Path | None = None) -> None:
    """Fine-tune the candidate `source_name` at `source_dir` with `method` into `out_dir` (with a manifest naming its
    source; the chat template of the model at `template_from` when the source has none: CP); metrics to
    `metrics_path`."""
    examples = read_sft_set(sft_dir / SFT_FILE)
    manifest = {"method": method, "from": source_name, "examples": len(examples),
                **({"class_weights": params.class_weights, "condition": best_class(params.class_weights)}
                   if method == "c-rlft" else {})}
    result = align_model(method, params, examples, source_dir, out_dir, curve_csv, manifest, template_from)
    write_json_atomic(metrics_path, {"train_loss": result.train_loss, "tokens_per_second": result.tokens_per_second,
                                     "steps": result.steps, "examples": len(examples)})
