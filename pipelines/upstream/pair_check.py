"""Can a base/chat pair (and a CP model) be merged, and what will the merge reconcile? Read from configs,
safetensors headers and tokenizers, no weights loaded: every problem listed at once, before a long run starts.
"""
from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from pipelines.merge.checkpoint import CheckpointError, SafetensorsCheckpoint, require_folder
from pipelines.merge.plan import check_architectures, read_config, vocabulary_tensor_names
from pipelines.merge.vocabulary import chat_special_tokens, check_tokenizer_rows, load_tokenizer

SHOWN = 5  # examples listed of each kind of token difference


@dataclass
class PairReport:
    """Problems that stop a merge, and the token differences it will reconcile (counts, first examples)."""

    problems: list[str] = field(default_factory=list)
    model_type: str | None = None
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    chat_special_tokens: list[str] = field(default_factory=list)
    end_of_turn: list[str] = field(default_factory=list)

    def as_json(self) -> str:
        """The report as indented JSON."""
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"

    def summary(self) -> list[str]:
        """One line per finding, for a terminal."""
        lines = [f"{self.model_type} pair; chat end-of-turn tokens {self.end_of_turn}"]
        lines += [f"{kind.replace('_', ' ')}: {found['count']} (e.g. {found['examples']})"
                  for kind, found in self.tokens.items() if found["count"]]
        return lines + [f"problem: {problem}" for problem in self.problems]


def _differences(tokenizers: dict[str, PreTrainedTokenizerBase]) -> dict[str, dict[str, Any]]:
    vocab = {role: tokenizer.get_vocab() for role, tokenizer in tokenizers.items()}

    def found(tokens: list[str]) -> dict[str, Any]:
        return {"count": len(tokens), "examples": sorted(tokens)[:SHOWN]}

    base = vocab["base"]
    others = [role for role in vocab if role != "base"]
    out = {f"tokens_only_in_{role}": found([t for t in vocab[role] if t not in base]) for role in others}
    out["tokens_only_in_base"] = found([t for t in base if t not in vocab["chat"]])
    for role in others:
        out[f"ids_moved_in_{role}"] = found([t for t, i in vocab[role].items() if t in base and base[t] != i])
    return out


def _tensor_problems(checkpoints: dict[str, SafetensorsCheckpoint], configs: dict[str, dict]) -> list[str]:
    """Tensor names every model must share, and their shapes (vocabulary matrices: all but the row count)."""
    problems = []
    base = checkpoints["base"]
    vocabulary = vocabulary_tensor_names(base, configs["base"])
    for role, checkpoint in ((r, c) for r, c in checkpoints.items() if r != "base"):
        names, base_names = set(checkpoint.names()), set(base.names())
        for where, missing in (("base", sorted(names - base_names)), (role, sorted(base_names - names))):
            if missing:
                problems.append(f"{len(missing)} tensor(s) missing from {where}, e.g. {missing[:3]}")
        for name in sorted(names & base_names):
            mine, theirs = checkpoint.shape(name), base.shape(name)
            if (mine[1:] != theirs[1:]) if name in vocabulary else (mine != theirs):
                problems.append(f"tensor {name!r}: base {tuple(theirs)}, {role} {tuple(mine)}")
    return problems


def _chat_problems(chat: Path, tokenizer: PreTrainedTokenizerBase, report: PairReport) -> None:
    if not tokenizer.chat_template:
        report.problems.append(f"chat {chat}: no chat template in its tokenizer")
    config = chat / "generation_config.json"
    eos = json.loads(config.read_text()).get("eos_token_id") if config.exists() else None
    ids = eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id]
    report.end_of_turn = [t for t in tokenizer.convert_ids_to_tokens([i for i in ids if i is not None]) if t]
    if not report.end_of_turn:
        report.problems.append(f"chat {chat}: no end-of-turn token (generation_config.json eos_token_id, or the "
                               "tokenizer's eos_token)")
    report.chat_special_tokens = chat_special_tokens(tokenizer)


def check_pair(models: dict[str, Path]) -> PairReport:
    """Check `base`, `chat` (and optionally `cp`) model folders against each other; nothing is raised, every
    problem is in the report."""
    report = PairReport()
    try:
        for path in models.values():
            require_folder(path)
        configs = {role: read_config(path) for role, path in models.items()}
        check_architectures(configs)
    except (CheckpointError, OSError) as error:
        report.problems.append(str(error))
        return report
    report.model_type = configs["base"].get("model_type")
    try:
        with ExitStack() as opened:
            tokenizers = {role: load_tokenizer(path) for role, path in models.items()}
            checkpoints = {role: opened.enter_context(SafetensorsCheckpoint(path)) for role, path in models.items()}
            _vocabulary_problems(models, configs, checkpoints, tokenizers, report)
            report.problems += _tensor_problems(checkpoints, configs)
    except (CheckpointError, ValueError) as error:
        report.problems.append(str(error))
        return report
    report.tokens = _differences(tokenizers)
    _chat_problems(models["chat"], tokenizers["chat"], report)
    return report


def _vocabulary_problems(models: dict[str, Path], configs: dict[str, dict],
                         checkpoints: dict[str, SafetensorsCheckpoint],
                         tokenizers: dict[str, PreTrainedTokenizerBase], report: PairReport) -> None:
    """Each model has an embedding matrix with a row for every id of its tokenizer."""
    for role, checkpoint in checkpoints.items():
        names = sorted(vocabulary_tensor_names(checkpoint, configs[role]))
        if not names:
            report.problems.append(f"{role} {models[role]}: no embedding tensor with the config's vocab_size rows")
            continue
        try:
            check_tokenizer_rows(models[role], tokenizers[role], names[0], checkpoint.shape(names[0])[0])
        except CheckpointError as error:
            report.problems.append(str(error))
