"""What a run would trip on, found before its first stage: every file and folder params.yaml names, read and checked.

Relative paths are read from the project root, where the stages run. Each problem names the params key and
the file, line or tensor at fault; a run with problems does not start.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from pipelines.align.sft_set import read_sft_set
from pipelines.config import Params
from pipelines.corpus.documents import check_document_folder
from pipelines.evaluate.sets import load_eval_set
from pipelines.model_folder import check_model_folder, require_folder
from pipelines.upstream.pair_check import check_pair

Check = Callable[[Path], object]


def _eval_set(needs: Literal["reference", "harmful"]) -> Check:
    return lambda path: load_eval_set(path, needs)


def _named_inputs(params: Params) -> Iterator[tuple[str, str, Check]]:
    """(params key, path as written, check) for every input the params name."""
    upstream, merge, evaluate = params.upstream, params.merge, params.eval
    documents = params.data.documents
    if params.data.source == "documents" and documents and "://" not in documents:  # S3 is read by the import
        yield "data.documents", documents, check_document_folder
    if upstream.base_path and upstream.chat_path:
        yield "upstream.base_path", upstream.base_path, check_model_folder
        yield "upstream.chat_path", upstream.chat_path, check_model_folder
    for i, vector in enumerate(merge.vectors):
        for role in ("base", "tuned"):
            yield (f"merge.vectors.{i}.{role}", getattr(vector, role),
                   lambda path: check_model_folder(path, merge.allow_pickle))
    for suite, needs in (("instruction", "reference"), ("multiturn", "reference"), ("safety", "harmful")):
        if getattr(evaluate.sets, suite):
            yield f"eval.sets.{suite}", getattr(evaluate.sets, suite), _eval_set(needs)
    if evaluate.refusal_classifier:
        yield "eval.refusal_classifier", evaluate.refusal_classifier, require_folder
    if evaluate.lm_eval_include_path:
        yield "eval.lm_eval_include_path", evaluate.lm_eval_include_path, require_folder
    if params.align.data:
        yield "align.data", params.align.data, read_sft_set


def input_problems(params: Params, root: Path) -> list[str]:
    """Every problem with the inputs `params` name, as `key: what is wrong` lines; empty when all are usable. A
    real base/chat pair whose folders are usable is also checked against itself (can it be merged?)."""
    problems = []
    for key, written, check in _named_inputs(params):
        try:
            check(root / written)  # an absolute path stays itself
        except (ValueError, OSError) as error:  # CheckpointError is a ValueError
            problems.append(f"{key}: {error}")
    upstream = params.upstream
    if upstream.base_path and upstream.chat_path and not any(p.startswith("upstream.") for p in problems):
        pair = check_pair({"base": root / upstream.base_path, "chat": root / upstream.chat_path})
        problems += [f"upstream: {problem}" for problem in pair.problems]
    return problems
