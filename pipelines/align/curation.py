"""LIMA-style curation: clean answers, drop the ones a careful editor would, deduplicate, sample for diversity."""
from __future__ import annotations

import html
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, replace

import regex

from pipelines.config import CurationParams
from pipelines.dedup import EXACT, NEAR, duplicate_reasons

URL = regex.compile(r"https?://\S+|www\.\S+")
TAG = regex.compile(r"<[^>]+>")
FIRST_PERSON = regex.compile(r"\b(i|i'm|i've|i'd|i'll|me|my|mine|myself)\b", regex.IGNORECASE)
REFERENCE = regex.compile(
    r"\b(as (mentioned|said|stated|noted) (above|before|earlier)|(the |an )?(other|previous|above) (answers?|posts?|"
    r"comments?|replies|reply)|see (my|the) (answer|post|comment) (above|below)|as others (have )?(said|mentioned))\b",
    regex.IGNORECASE,
)


@dataclass(frozen=True)
class SftExample:
    """One supervised example: the prompt, the answer, its category and its source (quality class)."""

    prompt: str
    answer: str
    category: str = "general"
    source: str = "expert"


def clean_answer(text: str) -> str:
    """The answer with HTML tags and links removed, entities decoded and spaces collapsed."""
    text = URL.sub("", TAG.sub(" ", html.unescape(text)))
    return " ".join(text.split())


def drop_reason(example: SftExample, params: CurationParams) -> str | None:
    """Why a (cleaned) example is dropped, or None to keep it."""
    length = len(example.answer)
    if length < params.min_chars:
        return "too_short"
    if length > params.max_chars:
        return "too_long"
    if params.drop_first_person and FIRST_PERSON.search(example.answer):
        return "first_person"
    if params.drop_references and REFERENCE.search(example.answer):
        return "refers_to_other_answers"
    return None


def diversity_sample(examples: list[SftExample], size: int, temperature: float, seed: int) -> list[SftExample]:
    """`size` examples drawn without replacement; each draw picks a category with weight count^(1/temperature)
    (of what is left), then an example of it at random. Temperature 1 is proportional; higher evens categories."""
    rng = random.Random(seed)
    pools: dict[str, list[SftExample]] = defaultdict(list)
    for example in examples:
        pools[example.category].append(example)
    for pool in pools.values():
        rng.shuffle(pool)
    chosen = []
    while len(chosen) < size and any(pools.values()):
        names = sorted(name for name, pool in pools.items() if pool)
        weights = [len(pools[name]) ** (1 / temperature) for name in names]
        chosen.append(pools[rng.choices(names, weights)[0]].pop())
    return chosen


@dataclass(frozen=True)
class Curation:
    """What curation kept, and a report of kept and dropped counts by reason."""

    kept: list[SftExample]
    report: dict


def curate(examples: list[SftExample], params: CurationParams) -> Curation:
    """Clean, filter, deduplicate (exact, then near), then sample across categories."""
    if params.strip_links:
        examples = [replace(e, answer=clean_answer(e.answer)) for e in examples]
    dropped: Counter[str] = Counter()
    survivors = []
    for example in examples:
        reason = drop_reason(example, params)
        if reason:
            dropped[reason] += 1
        else:
            survivors.append(example)
    reasons = duplicate_reasons([f"{e.prompt}\n{e.answer}" for e in survivors], params.near_duplicate_threshold)
    for reason in [EXACT] + ([NEAR] if params.near_duplicate_threshold is not None else []):
        dropped[reason] += reasons.count(reason)
    survivors = [e for e, reason in zip(survivors, reasons) if reason is None]
    kept = survivors
    if params.sample_size is not None and len(kept) > params.sample_size:
        kept = diversity_sample(kept, params.sample_size, params.temperature, params.seed)
        dropped["not_sampled"] += len(survivors) - len(kept)
    report = {"input": len(examples), "kept": len(kept), "dropped": dict(sorted(dropped.items())),
              "kept_by_category": dict(sorted(Counter(e.category for e in kept).items())),
              "kept_by_source": dict(sorted(Counter(e.source for e in kept).items()))}
    return Curation(kept, report)
