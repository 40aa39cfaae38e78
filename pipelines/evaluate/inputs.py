"""What an evaluation reads besides the two models, by role, with the setting that names another file: one list,
so that the check before a model is loaded (`chatgraft evaluate`, `chatgraft check`, every run's input check) and the
evaluation itself read the same files. Imports no torch: a refusal is answered before the model stack loads."""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from pipelines.atomic import numbered_jsonl
from pipelines.config import EvalParams
from pipelines.corpus.files import EVAL, EVAL_MULTITURN, EVAL_SAFETY, LM_EVAL, TARGET_LANGUAGE, VALID
from pipelines.evaluate.sets import load_eval_set

SET_FILES = {"instruction": EVAL, "multiturn": EVAL_MULTITURN, "safety": EVAL_SAFETY}  # as the corpus stage names them


@dataclass(frozen=True)
class EvalInput:
    """A file or folder the evaluation reads: where, what for, and the setting that names another."""

    path: Path
    purpose: str
    key: str | None  # the eval setting that names it instead of the corpus folder, or makes it unneeded
    in_corpus: bool  # taken from the corpus folder (`key` is not set)
    reader: Callable[[Path], Any]  # raises ValueError or OSError naming the file, line or key at fault

    def read(self) -> Any:
        """What the evaluation takes from it; the check before any model is loaded is this same call."""
        return self.reader(self.path)


def read_target_language(path: Path) -> dict[str, list[str]]:
    """The generated world's target language: `{"scripts": [...]}` or `{"lexicon": [...]}`."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    try:
        world = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a JSON file: {error}") from None
    if not isinstance(world, dict) or not {"scripts", "lexicon"} & set(world):
        raise ValueError(f"{path}: expected an object with `scripts` or `lexicon`")
    return world


def require_folder(path: Path) -> None:
    """Raise FileNotFoundError naming `path` unless it is a folder (the harness and the classifier read inside)."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: {'not a folder' if path.exists() else 'no such folder'}")


def read_heldout_text(path: Path) -> list[str]:
    """The held-out documents, one `{"text": ...}` a line; none is an error (perplexity needs text)."""
    texts = []
    for number, row in numbered_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise ValueError(f"{path}:{number}: text: a string is required")
        texts.append(row["text"])
    if not texts:
        raise ValueError(f"{path}: no held-out documents")
    return texts


def _named_or_corpus(written: str | None, in_corpus: Path, purpose: str, key: str,
                     reader: Callable[[Path], Any]) -> EvalInput:
    return EvalInput(Path(written) if written else in_corpus, purpose, key, not written, reader)


def eval_inputs(params: EvalParams, corpus_dir: Path) -> dict[str, EvalInput]:
    """Every file and folder `evaluate_candidate` reads besides the two models, by role: what is checked before a
    model is loaded (here, by `chatgraft evaluate` and by `chatgraft check`) is what the evaluation then reads."""
    inputs = {
        suite: _named_or_corpus(getattr(params.sets, suite), corpus_dir / name, f"the {suite} set", f"eval.sets.{suite}",
                                partial(load_eval_set, needs="harmful" if suite == "safety" else "reference",
                                        limit=params.max_questions))
        for suite, name in SET_FILES.items()
    }
    if not params.language_scripts:
        inputs["target_language"] = EvalInput(corpus_dir / TARGET_LANGUAGE, "tells which answers are in the target "
                                              "language", "eval.language_scripts", True, read_target_language)
    inputs["heldout"] = EvalInput(corpus_dir / VALID, "held-out text for target_perplexity", None, True,
                                  read_heldout_text)
    if params.lm_eval_tasks:
        inputs["lm_eval"] = _named_or_corpus(params.lm_eval_include_path, corpus_dir / LM_EVAL, "the task YAMLs of "
                                             "eval.lm_eval_tasks", "eval.lm_eval_include_path", require_folder)
    if params.refusal_classifier:
        inputs["refusal_classifier"] = EvalInput(Path(params.refusal_classifier), "the refusal classifier",
                                                 "eval.refusal_classifier", False, require_folder)
    return inputs


def eval_input_problems(inputs: Mapping[str, EvalInput], corpus_fix: str,
                        key_fixes: Mapping[str, str] | None = None) -> list[str]:
    """Each input that cannot be read, as `what is wrong (what it is for): how to fix it`: the setting that names
    another file (`key_fixes` words a key another way, e.g. as a command-line option) or, for a file taken from
    the corpus folder, `corpus_fix`."""
    problems = []
    for item in inputs.values():
        try:
            item.read()
        except (ValueError, OSError) as error:
            fixes = [(key_fixes or {}).get(item.key, f"set {item.key}")] if item.key else []
            fixes += [corpus_fix] if item.in_corpus else []
            problems.append(f"{error} ({item.purpose}): {'; or '.join(fixes)}")
    return problems
