"""merged = CP + ratio * (chat - base): plan the merge, stream it (`merger`), write the tokenizer and configs.

Inputs are memory-mapped and the output tensors streamed block by block, so memory is bounded by a few blocks
whatever the model size. The output directory appears only when every tensor was written and checked.
"""
from __future__ import annotations

import json
import tempfile
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from pipelines.atomic import atomic_dir, check_replaceable, write_json_atomic
from pipelines.config import MergeSettings
from pipelines.merge.checkpoint import SafetensorsCheckpoint, require_folder
from pipelines.merge.lora import fold_adapter, is_peft_adapter
from pipelines.merge.merger import TensorMerger, stream_merge
from pipelines.merge.plan import CONFIG, check_architectures, plan_tensors, read_config, vocabulary_tensor_names
from pipelines.merge.report import MergeReport, describe_merge, vocabulary_summary
from pipelines.merge.task_vector import open_task_vectors, plan_merge_vocabulary
from pipelines.merge.vocabulary import load_tokenizer, merged_tokenizer

GENERATION_CONFIG = "generation_config.json"
MERGED_MODEL = "merged model"  # the kind of output a merge writes: a previous one may be replaced


def _write_tokenizer_and_configs(tokenizer: PreTrainedTokenizerBase, chat_tokenizer: PreTrainedTokenizerBase,
                                 cp: Path, chat: Path, rows: int | None, out: Path) -> None:
    """CP's config and the merged tokenizer; the chat model's generation config with its token ids remapped."""
    tokenizer.save_pretrained(out)
    config = read_config(cp)
    if rows is not None:
        config["vocab_size"] = rows
    config["eos_token_id"] = tokenizer.eos_token_id
    (out / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if (chat / GENERATION_CONFIG).exists():
        generation = json.loads((chat / GENERATION_CONFIG).read_text())
        for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
            if generation.get(key) is not None:  # ids of the chat vocabulary, as ids of the merged one
                generation[key] = tokenizer.convert_tokens_to_ids(chat_tokenizer.convert_ids_to_tokens(generation[key]))
        (out / GENERATION_CONFIG).write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")


def merge_chat_vector(*, base: Path, chat: Path, cp: Path, out: Path, ratio: float, settings: MergeSettings,
                      report_path: Path | None = None, overwrite: bool = False,
                      hub_ids: dict[str, str | None] | None = None) -> MergeReport:
    """Write CP + ratio * (chat - base) (and any further task vectors) to `out`, atomically, as sharded
    safetensors with the merged tokenizer; write the per-tensor report to `report_path` when given.

    `out` may be absent, empty or a previous merged model; anything else is refused (OutputExistsError)
    before a tensor is read, unless `overwrite` is set. `hub_ids` (`base`, `chat` -> hub repo id) name the sources
    in the model card."""
    for folder in (base, chat, cp):
        require_folder(folder)
    if not overwrite:
        check_replaceable(out, MERGED_MODEL)
    sources = {"cp": cp, "chat": chat, "base": base} | {f"{v.name} tuned": Path(v.tuned) for v in settings.vectors}
    with ExitStack() as stack:
        if is_peft_adapter(cp):
            out.parent.mkdir(parents=True, exist_ok=True)
            folded = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".cp-folded.", dir=out.parent)))
            cp = fold_adapter(cp, base, folded)
        vectors = open_task_vectors(base, chat, ratio, settings, stack)
        inputs = {role: ck for v in vectors for role, ck in v.checkpoints().items()}
        check_architectures({"cp": read_config(cp), **{role: read_config(ck.model_dir) for role, ck in inputs.items()}})
        cp_ck = stack.enter_context(SafetensorsCheckpoint(cp, settings.allow_pickle))
        vocabulary_names = vocabulary_tensor_names(cp_ck, read_config(cp))
        chat_tokenizer = load_tokenizer(chat)
        tokenizer, added = merged_tokenizer(load_tokenizer(cp), chat_tokenizer)
        vocabulary, vectors = plan_merge_vocabulary(cp_ck, vectors, vocabulary_names, tokenizer, added,
                                                    chat_tokenizer, settings)
        plans = plan_tensors(cp_ck, inputs, [v.ratio for v in vectors], settings.rules, vocabulary_names,
                             vocabulary.rows if vocabulary else 0)
        merger = TensorMerger(cp_ck, vectors[0].tuned, vectors, vocabulary, settings)
        with atomic_dir(out, MERGED_MODEL, overwrite) as staging:
            reports, files = stream_merge(plans, merger, staging, settings.shard_bytes(settings.max_shard_size),
                                     f"merge alpha={ratio}")
            _write_tokenizer_and_configs(tokenizer, chat_tokenizer, cp, chat, vocabulary.rows if vocabulary else None,
                                         staging)
            report = MergeReport(ratio, settings.method, settings.embedding_rows, [v.name for v in vectors],
                                 vocabulary_summary(vocabulary, vectors[0].rows), files, reports)
            describe_merge(staging, report, settings, sources, title=f"{out.name}: chat vector merged into CP",
                           hub_ids=hub_ids)
    if report_path is not None:
        write_json_atomic(report_path, asdict(report))
    return report
