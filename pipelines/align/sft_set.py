"""The SFT set on disk: jsonl rows of {prompt, answer, category, source}, read with errors that name the row."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from pipelines.align.curation import SftExample
from pipelines.atomic import numbered_jsonl, write_jsonl_atomic

SFT_FILE = "sft.jsonl"


def _example(row: object, where: str) -> SftExample:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object with prompt and answer, got {type(row).__name__}")
    for key in ("prompt", "answer"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise ValueError(f"{where}: key {key!r} must be a non-empty string, got {row.get(key)!r}")
    unknown = set(row) - {"prompt", "answer", "category", "source"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (expected prompt, answer, category, source)")
    return SftExample(row["prompt"], row["answer"], str(row.get("category", "general")),
                      str(row.get("source", "expert")))


def read_sft_set(path: Path) -> list[SftExample]:
    """Every example of a jsonl SFT set; a bad row raises an error naming the file and line."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (the SFT set: align.data, or the corpus stage's {SFT_FILE})")
    examples = [_example(row, f"{path}:{number}") for number, row in numbered_jsonl(path)]
    if not examples:
        raise ValueError(f"{path}: the SFT set is empty")
    return examples


def write_sft_set(path: Path, examples: list[SftExample]) -> None:
    """Write examples as jsonl, atomically."""
    write_jsonl_atomic(path, [asdict(example) for example in examples])
