"""The `corpus` stage: the CP training and held-out text, from the default world's generator (with every other
data set the world needs) or from documents of one's own (`data.source: documents`, nothing generated)."""
from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

from pipelines.atomic import atomic_dir, write_json_atomic, write_jsonl_atomic
from pipelines.config import WORLD_DEFAULTS, DataParams
from pipelines.corpus.cleaning import clean_document
from pipelines.corpus.files import (
    EVAL, EVAL_MULTITURN, EVAL_SAFETY, LM_EVAL, SFT, TARGET_LANGUAGE, TRAIN, UPSTREAM_CHAT, UPSTREAM_TARGET_TEXT,
    UPSTREAM_TEXT, VALID,
)
from pipelines.corpus.documents import document_files, read_file_documents
from pipelines.corpus.heldout import HeldOutSplit
from pipelines.corpus.language import SCRIPT, TargetLanguage, invent_language
from pipelines.dedup import DuplicateFilter
from pipelines.corpus.world import (
    Fact, World, build_world, chat_conversation, fact_choices, follow_up_conversation, pretraining_sentences,
    safety_conversations, safety_requests, sft_rows, split_for_sft, target_lexicon, world_texts,
)

LOGGER = logging.getLogger(__name__)
LM_EVAL_TASK = """task: target_facts
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data_file}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


@dataclass(frozen=True)
class CorpusResult:
    """Counts of what the stage wrote."""

    counts: dict[str, int]


def _repeated_shuffled(items: list[str], repeats: int, rng: random.Random) -> list[str]:
    out = items * repeats
    rng.shuffle(out)
    return out


def _cp_sentences(world: World, params: DataParams, rng: random.Random, language: TargetLanguage | None) -> list[str]:
    """Target statements, plus (optionally) replayed upstream text, the usual guard against forgetting in CP; in the
    language world the statements are in the target language, with the upstream text translated beside them."""
    translate = language.translate if language else str
    target = [translate(fact.statement()) for fact in world.target] * params.cp_repeats
    replay = rng.choices(pretraining_sentences(world), k=round(params.cp_replay * len(target)))
    general = [translate(s) for s in pretraining_sentences(world)] * params.language_repeats if language else []
    sentences = target + replay + general
    rng.shuffle(sentences)
    return sentences


def _follow_ups(facts: list[Fact], rng: random.Random) -> list[tuple[list[dict[str, str]], str]]:
    """For each entity, two of its facts: the second question only makes sense after the first turn."""
    by_entity: dict[str, list[Fact]] = {}
    for fact in facts:
        by_entity.setdefault(fact.entity, []).append(fact)
    return [follow_up_conversation(*rng.sample(entity_facts, 2)) for entity_facts in by_entity.values()]


def _write_lm_eval_task(facts: list[Fact], params: DataParams, staging: Path, final: Path,
                        translate: Callable[[str], str]) -> None:
    """Multiple choice over each target fact's possible values; the data path is relative to the project root,
    where stages run (lm-eval reads it relative to the working directory)."""
    rows = []
    for fact in facts:
        choices, answer = fact_choices(fact, params.values_per_attribute)
        rows.append({"question": translate(fact.question()), "choices": list(map(translate, choices)), "answer": answer})
    staging.mkdir()
    write_jsonl_atomic(staging / "target_facts.jsonl", rows)
    data_file = os.path.relpath(final / "target_facts.jsonl")
    (staging / "target_facts.yaml").write_text(LM_EVAL_TASK.format(data_file=data_file))


@dataclass
class IncomingCounts:
    """What became of the inbox documents, counted as they stream into the training text."""

    files: int = 0
    documents: int = 0
    too_short_removed: int = 0
    duplicates_removed: int = 0
    heldout: int = 0
    characters: int = 0
    words: int = 0


def _incoming_documents(files: list[Path], params: DataParams, counts: IncomingCounts) -> Iterator[str]:
    """The documents of `files`, cleaned, long enough and not repeating earlier ones (`data.dedup`), one at a time."""
    near = params.near_duplicate_threshold if params.dedup == "minhash" else None
    duplicates = DuplicateFilter(near) if params.dedup != "none" else None
    counts.files = len(files)
    for path in files:
        for text in map(clean_document, read_file_documents(path)):
            if len(text) < params.min_document_chars:
                counts.too_short_removed += 1
            elif duplicates is not None and duplicates.reason(text):
                counts.duplicates_removed += 1
            else:
                counts.documents += 1
                counts.characters += len(text)
                counts.words += len(text.split())
                yield text


def _checked_floor(split: HeldOutSplit, params: DataParams, heldout_rows: int) -> dict[str, int | str] | None:
    """The held-out documents' shortfall from `data.heldout_min`, logged as a warning; an error where nothing at all
    is held out, as held-out loss and perplexity would read nothing (floor 0: no check)."""
    shortfall = split.shortfall()
    if shortfall and not heldout_rows:
        raise ValueError(f"data.heldout_share: no document held out of {shortfall['documents']} (held-out loss and "
                         f"perplexity need some): {shortfall['fix']}")
    if shortfall:
        LOGGER.warning("data.heldout_min: %s of %s documents held out, fewer than %s: %s (reports/corpus.json: "
                       "heldout_shortfall)", shortfall["heldout"], shortfall["documents"], shortfall["floor"],
                       shortfall["fix"])
    return shortfall


def _write_cp_text(staging: Path, world_train: Iterable[str], world_heldout: list[str],
                   incoming_documents: Iterable[str], params: DataParams,
                   counts: IncomingCounts) -> tuple[dict[str, int], dict[str, int | str] | None]:
    """The CP training text (the world's, and the inbox documents CP may train on) and the held-out text (the
    world's, and the inbox documents held out by hash): no held-out document is in the training text. Returns the
    records written and the shortfall from `data.heldout_min`, if any."""
    split = HeldOutSplit(params.heldout_share, params.heldout_min, params.seed)
    with (staging / VALID).open("w") as heldout:
        heldout.writelines(json.dumps({"text": text}) + "\n" for text in world_heldout)
        trained = write_jsonl_atomic(staging / TRAIN, ({"text": t} for t in chain(
            world_train, split.training(incoming_documents, heldout))))
    counts.heldout = split.held
    written = {TRAIN.removesuffix(".jsonl"): trained, VALID.removesuffix(".jsonl"): len(world_heldout) + split.held}
    return written, _checked_floor(split, params, written[VALID.removesuffix(".jsonl")])


def _write_stats(stats_path: Path, counts: dict[str, int], params: DataParams, documents: IncomingCounts,
                 shortfall: dict[str, int | str] | None) -> None:
    """The records written, what became of the documents (the inbox's, or with `documents` all of them), and the
    held-out documents' shortfall from `data.heldout_min` where there is one; for a generated world, what `auto`
    means in it (the keys it sets)."""
    world = {"source_entities": params.source_entities, "target_entities": params.target_entities,
             "world": params.world, "world_settings": WORLD_DEFAULTS[params.world]}
    described = {"incoming": vars(documents)} if params.source == "generator" else {"documents": vars(documents)}
    write_json_atomic(stats_path, {"records": counts, **(world if params.source == "generator" else {}), **described,
                                   **({"heldout_shortfall": shortfall} if shortfall else {})})


def build_corpus(params: DataParams, out_dir: Path, stats_path: Path, incoming: Path | None = None,
                 documents: Path | None = None) -> CorpusResult:
    """Write the corpus to `out_dir` (atomically) and its counts to `stats_path`: the default world's, or with
    `data.source: documents` the training and held-out text of the documents in `documents` (the imported corpus)."""
    if params.source == "documents":
        if documents is None or not documents.is_dir():
            raise FileNotFoundError(f"data.documents: no imported documents at {documents} (the flow imports "
                                    "them with `dvc import-url` before the corpus stage)")
        return build_document_corpus(params, out_dir, stats_path, [documents] + ([incoming] if incoming else []))
    return build_world_corpus(params, out_dir, stats_path, incoming)


def build_document_corpus(params: DataParams, out_dir: Path, stats_path: Path, folders: list[Path]) -> CorpusResult:
    """The CP text from the documents under `folders` only, streamed: cleaned, deduplicated and split by document
    hash into training and held-out text (`data.heldout_share`)."""
    counts = IncomingCounts()
    files = [path for folder in folders for path in document_files(folder)]
    with atomic_dir(out_dir, "corpus") as staging:
        written, shortfall = _write_cp_text(staging, [], [], _incoming_documents(files, params, counts), params,
                                            counts)
        if not written[TRAIN.removesuffix(".jsonl")]:  # raised inside: the last corpus stays as it was
            raise ValueError(f"data.documents: no document left to train on in {', '.join(map(str, folders))} "
                             f"({counts.files} files, {counts.documents} documents kept, {counts.heldout} held out)")
    _write_stats(stats_path, written, params, counts, shortfall)
    return CorpusResult(counts=written)


def _glimpse(upstream_text: list[str], world: World, params: DataParams, language: TargetLanguage | None) -> list[str]:
    """Language world: `data.base_target_share` of the upstream text in the target language (each word with
    probability `data.base_target_mix`), the sentences naming target entities left out."""
    if language is None:
        return []
    rng = random.Random(params.seed + 4)
    picked = rng.sample(upstream_text, round(params.base_target_share * len(upstream_text)))
    target_names = {fact.entity for fact in world.target}
    return [language.code_switch(text, params.base_target_mix, rng) for text in picked
            if not target_names & set(text.split())]


def _chat_glimpse(world: World, params: DataParams, language: TargetLanguage | None) -> list[list[dict[str, str]]]:
    """Language world: `data.chat_target_share` of the chat model's source questions again, both turns in the target
    language (each word with probability `data.base_target_mix`), as a chat model's tuning holds a little of many
    languages. They join the chat set, so the upstream tokenizer learns some of the language's pieces from them."""
    if language is None:
        return []
    rng = random.Random(params.seed + 5)
    picked = rng.sample(world.source, round(params.chat_target_share * len(world.source)))
    return [[message | {"content": language.code_switch(message["content"], params.base_target_mix, rng)}
             for message in chat_conversation(fact)] for fact in picked]


def _in(translate: Callable[[str], str], messages: list[dict[str, str]]) -> list[dict[str, str]]:
    return [message | {"content": translate(message["content"])} for message in messages]


def _target_language(world: World, params: DataParams) -> tuple[TargetLanguage | None, dict]:
    """The language world's invented language, and how the evaluation tells it (its script, or the domain world's
    lexicon), with its dictionary for people reading the answers."""
    if params.world == "domain":
        return None, {"lexicon": target_lexicon(world)}
    language = invent_language(world_texts(world), params.seed)
    return language, {"scripts": [SCRIPT], "dictionary": language.words}


def build_world_corpus(params: DataParams, out_dir: Path, stats_path: Path,
                       incoming: Path | None = None) -> CorpusResult:
    """Generate the world and write its data sets to `out_dir` (atomically) and counts to `stats_path`; the
    documents in `incoming` (the inbox snapshot) stream into the CP training text, but those held out by hash
    (`data.heldout_share`), which join the world's held-out text. In the language world everything on the target
    side (CP text, evaluation sets, SFT set) is in the target language; upstream stays in the source language but
    for the glimpses of mixed-language text and chat (`data.base_target_share`, `data.chat_target_share`)."""
    world = build_world(params.seed, params.source_entities, params.target_entities, params.values_per_attribute)
    language, language_file = _target_language(world, params)
    to_target = language.translate if language else str
    rng = random.Random(params.seed + 1)
    incoming_counts = IncomingCounts()
    incoming_documents = _incoming_documents(document_files(incoming) if incoming else [], params, incoming_counts)
    sft_facts, eval_facts = split_for_sft(world, params.sft_share, random.Random(params.seed + 2))
    target_questions = list(eval_facts)
    rng.shuffle(target_questions)
    upstream_text = _repeated_shuffled(pretraining_sentences(world), params.pretrain_repeats, rng)
    glimpse = _glimpse(upstream_text, world, params, language)
    cp_text = _cp_sentences(world, params, rng, language)
    chat = [chat_conversation(fact) for fact in world.source] + (safety_conversations(world.source) if language else [])
    chat += _chat_glimpse(world, params, language)
    sft = sft_rows(sft_facts, params.sft_expert_share, params.values_per_attribute, random.Random(params.seed + 3))
    sets: dict[str, Iterable[dict]] = {
        UPSTREAM_TEXT: [{"text": s} for s in upstream_text],
        **({UPSTREAM_TARGET_TEXT: [{"text": s} for s in glimpse]} if language else {}),  # source-world facts only
        UPSTREAM_CHAT: [{"messages": messages} for messages in chat],
        EVAL: [{"messages": _in(to_target, chat_conversation(fact)[:1]), "reference": to_target(fact.value),
                "tags": ["target", fact.attribute]} for fact in target_questions],
        EVAL_MULTITURN: [{"messages": _in(to_target, messages), "reference": to_target(reference),
                          "tags": ["target", "follow-up"]} for messages, reference in _follow_ups(eval_facts, rng)],
        EVAL_SAFETY: [{"messages": [{"role": "user", "content": to_target(request)}], "harmful": harmful,
                       "tags": ["target"]} for _, request, harmful in safety_requests(eval_facts)],
        SFT: [row | {"prompt": to_target(row["prompt"]), "answer": to_target(row["answer"])} for row in sft],
    }
    # held out: the eval facts as question and answer, a phrasing of them CP never trains on
    world_heldout = [to_target(f"{fact.question()} {fact.answer()}") for fact in eval_facts]
    with atomic_dir(out_dir, "corpus") as staging:
        counts, shortfall = _write_cp_text(staging, cp_text, world_heldout, incoming_documents, params,
                                           incoming_counts)
        counts |= {name.removesuffix(".jsonl"): write_jsonl_atomic(staging / name, rows) for name, rows in sets.items()}
        write_json_atomic(staging / TARGET_LANGUAGE, language_file)
        _write_lm_eval_task(eval_facts, params, staging / LM_EVAL, out_dir / LM_EVAL, to_target)
        write_json_atomic(staging / "world.json", {"source": [vars(f) for f in world.source], "target": [vars(f) for f in world.target]})
    _write_stats(stats_path, counts, params, incoming_counts, shortfall)
    return CorpusResult(counts=counts)
