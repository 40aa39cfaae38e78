"""What an evaluation depends on besides the model, as one hash: scores are comparable only when it is equal."""
from __future__ import annotations

import hashlib
from pathlib import Path

from pipelines.config import EvalParams
from pipelines.corpus.files import EVAL, EVAL_MULTITURN, EVAL_SAFETY, LM_EVAL, TARGET_LANGUAGE, VALID


def _evaluation_files(params: EvalParams, corpus_dir: Path) -> list[Path]:
    sets = params.sets
    files = [Path(sets.instruction or corpus_dir / EVAL), Path(sets.multiturn or corpus_dir / EVAL_MULTITURN),
             Path(sets.safety or corpus_dir / EVAL_SAFETY), corpus_dir / VALID, corpus_dir / TARGET_LANGUAGE]
    if params.lm_eval_tasks:
        include = Path(params.lm_eval_include_path) if params.lm_eval_include_path else corpus_dir / LM_EVAL
        files += sorted(p for p in include.rglob("*") if p.is_file())
    return [f for f in files if f.exists()]


def evaluation_fingerprint(params: EvalParams, corpus_dir: Path) -> str:
    """sha256 of the eval params and the bytes of every set, held-out text and lexicon the suites read."""
    digest = hashlib.sha256(params.model_dump_json().encode())
    for path in _evaluation_files(params, corpus_dir):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
