"""merged = CP + ratio * (chat - base), streamed tensor by tensor and block by block.

Inputs are memory-mapped; each output tensor is computed in fp32 in blocks of about CHUNK_ELEMENTS values
(whole tensors for ties/dare, which need them), cast to the CP tensor's dtype and appended to the output shard.
Memory is therefore bounded by a few blocks, whatever the model size. The output directory appears only
when every tensor was written and checked.
"""
from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from pipelines.atomic import atomic_dir, check_replaceable, write_json_atomic
from pipelines.config import MergeSettings
from pipelines.layout import NEW_TOKENS
from pipelines.merge.checkpoint import CheckpointError, SafetensorsCheckpoint, require_folder
from pipelines.merge.lora import fold_adapter, is_peft_adapter
from pipelines.merge.methods import WHOLE_TENSOR_METHODS, combine
from pipelines.merge.plan import (
    CONFIG, TensorPlan, check_architectures, plan_tensors, read_config, vocabulary_tensor_names,
)
from pipelines.merge.vocabulary import (
    NO_ROW, DeltaRows, VocabularyPlan, chat_special_tokens, check_tokenizer_rows, load_tokenizer, merged_tokenizer,
    plan_vocabulary, row_tokens,
)
from pipelines.merge.writer import ShardedSafetensorsWriter

GENERATION_CONFIG = "generation_config.json"
MERGED_MODEL = "merged model"  # the kind of output a merge writes: a previous one may be replaced
CHUNK_ELEMENTS = 1 << 18  # fp32 blocks of 1 MiB stay in cache across the few passes of the arithmetic


@dataclass(frozen=True)
class TensorReport:
    """What the merge did to one tensor."""

    name: str
    action: str
    ratio: float
    delta_norm: float
    relative_change: float
    rows_with_delta: int | None = None


@dataclass(frozen=True)
class MergeReport:
    """The whole merge: settings, vocabulary, and each tensor's report."""

    ratio: float
    method: str
    embedding_rows: str
    vectors: list[str]
    vocabulary: dict[str, object]
    files: list[str]
    tensors: list[TensorReport] = field(default_factory=list)


@dataclass
class TaskVector:
    """tuned - base, read lazily from two checkpoints."""

    name: str
    base: SafetensorsCheckpoint
    tuned: SafetensorsCheckpoint
    ratio: float
    rows: DeltaRows | None = None

    def checkpoints(self) -> dict[str, SafetensorsCheckpoint]:
        """The two checkpoints by the role names errors use ("base"/"chat" for the chat vector)."""
        if self.name == "chat":
            return {"base": self.base, "chat": self.tuned}
        return {f"{self.name} base": self.base, f"{self.name} tuned": self.tuned}


def _as_rows(tensor: torch.Tensor, vocabulary: bool) -> torch.Tensor:
    """A view with one output row per vocabulary row, or one row per value for other tensors."""
    return tensor if vocabulary else tensor.reshape(-1, 1)


def _rows(matrix: torch.Tensor, index: torch.Tensor | None, block: slice) -> torch.Tensor:
    """Rows `block`, or rows index[block] (all present): a view of the mapped file when they are contiguous,
    else a gathered copy; in the file's dtype either way, so callers must not write into it."""
    if index is None:
        return matrix[block]
    rows = index[block]
    start = int(rows[0]) if rows.numel() else 0
    if torch.equal(rows, torch.arange(start, start + rows.numel())):
        return matrix[start:start + rows.numel()]
    return matrix.index_select(0, rows)


def _fp32(rows: torch.Tensor) -> torch.Tensor:
    return rows.to(torch.float32, copy=True)


def _blocks(rows: int, row_len: int, whole: bool) -> list[slice]:
    step = rows if whole else max(1, CHUNK_ELEMENTS // max(row_len, 1))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, max(step, 1))] or [slice(0, 0)]


class _Merger:
    """Computes the output tensors block by block; keeps the running norms for the report."""

    def __init__(self, cp: SafetensorsCheckpoint, chat: SafetensorsCheckpoint, vectors: list[TaskVector],
                 vocabulary: VocabularyPlan | None, settings: MergeSettings) -> None:
        self.cp, self.chat, self.vectors, self.vocabulary, self.settings = cp, chat, vectors, vocabulary, settings
        self._views: dict[tuple[int, str], torch.Tensor] = {}

    def _matrix(self, checkpoint: SafetensorsCheckpoint, plan: TensorPlan) -> torch.Tensor:
        """The tensor as rows, made once per tensor (reshaping a mapped tensor is not free)."""
        key = (id(checkpoint), plan.name)
        if key not in self._views:
            self._views[key] = _as_rows(checkpoint.get(plan.name), plan.vocabulary)
        return self._views[key]

    def _start_rows(self, plan: TensorPlan, block: slice) -> torch.Tensor:
        """The CP values of a block (read-only), with the chat model's rows for tokens new to CP."""
        cp = self._matrix(self.cp, plan)
        if not plan.vocabulary:
            return _rows(cp, None, block)
        source = self.vocabulary.cp[block]  # type: ignore[union-attr]
        from_cp = source != NO_ROW
        if bool(from_cp.all()):
            return _rows(cp, self.vocabulary.cp, block)  # type: ignore[union-attr]
        rows = torch.empty((source.numel(), *cp.shape[1:]), dtype=cp.dtype)
        rows[from_cp] = cp[source[from_cp]]
        rows[~from_cp] = self.chat.get(plan.name)[self.vocabulary.chat[block][~from_cp]]  # type: ignore[union-attr]
        return rows

    def _delta(self, vector: TaskVector, plan: TensorPlan, block: slice) -> tuple[torch.Tensor, torch.Tensor | None]:
        """tuned - base in fp32 for a block, and which rows have one (vocabulary matrices only)."""
        base, tuned = self._matrix(vector.base, plan), self._matrix(vector.tuned, plan)
        if not plan.vocabulary:
            # in-place ops with a bf16/fp16 operand compute in fp32 (exact upcast): no second fp32 copy
            return _fp32(_rows(tuned, None, block)).sub_(_rows(base, None, block)), None
        rows = vector.rows
        direct = rows.direct[block]  # type: ignore[union-attr]
        if bool(direct.all()):
            return _fp32(_rows(tuned, rows.tuned, block)).sub_(_rows(base, rows.base, block)), direct  # type: ignore[union-attr]
        delta = torch.zeros((direct.numel(), *tuned.shape[1:]), dtype=torch.float32)
        delta[direct] = _fp32(tuned[rows.tuned[block][direct]]).sub_(base[rows.base[block][direct]])  # type: ignore[union-attr]
        for row, (base_rows, tuned_rows) in rows.pieces.items():  # type: ignore[union-attr]
            if block.start <= row < block.stop:
                delta[row - block.start] = _fp32(tuned[tuned_rows]).sub_(base[base_rows]).mean(dim=0)
        return delta, rows.mask[block]  # type: ignore[union-attr]

    def _merged_block(self, plan: TensorPlan, block: slice, stats: dict[str, float]) -> torch.Tensor:
        """CP + delta for one block, in fp32 (or CP's own values when nothing is added)."""
        start = self._start_rows(plan, block)
        if start.is_floating_point():
            stats["cp_sq"] += float(torch.linalg.vector_norm(start, dtype=torch.float32)) ** 2
        if not plan.adds:
            return start
        delta, touched = self._combined_delta(plan, block)
        stats["delta_sq"] += float(delta.norm()) ** 2
        if touched is not None:
            stats["rows"] += int(touched.sum())
        if touched is None or bool(touched.all()):
            return delta.add_(start)  # = cp + delta: fp32 addition commutes bit for bit
        merged = _fp32(start)
        merged[touched] += delta[touched]
        return merged

    def tensor(self, plan: TensorPlan, write, progress: tqdm) -> TensorReport:
        """Merge one tensor, handing each finished block to `write`."""
        rows, row_len = (plan.meta.shape[0], math.prod(plan.meta.shape[1:])) if plan.vocabulary \
            else (plan.meta.numel(), 1)
        whole = self.settings.method in WHOLE_TENSOR_METHODS
        stats = {"cp_sq": 0.0, "delta_sq": 0.0, "rows": 0}
        self._views = {}
        limit = torch.finfo(plan.meta.dtype).max if plan.meta.is_floating_point() else None
        for block in _blocks(rows, row_len, whole):
            merged = self._merged_block(plan, block, stats)
            if limit is not None and merged.numel():
                low, high = torch.aminmax(merged)  # NaN propagates; beyond the output dtype's range casts to Inf
                if not (-limit <= float(low) and float(high) <= limit):
                    raise CheckpointError(f"tensor {plan.name!r}: the merge produced NaN or Inf")
            out = merged.to(plan.meta.dtype)
            write(plan.name, out)
            progress.update(out.numel() * out.element_size())
        delta_norm = math.sqrt(stats["delta_sq"])
        rows_with_delta = int(stats["rows"]) if plan.vocabulary else None
        return TensorReport(plan.name, plan.action if plan.adds else "skip", plan.weights[0], delta_norm,
                            delta_norm / max(math.sqrt(stats["cp_sq"]), 1e-12), rows_with_delta)

    def _combined_delta(self, plan: TensorPlan, block: slice) -> tuple[torch.Tensor, torch.Tensor | None]:
        deltas, weights, masks = [], [], []
        for vector, weight in zip(self.vectors, plan.weights):
            if weight:
                delta, mask = self._delta(vector, plan, block)
                deltas.append(delta), weights.append(weight), masks.append(mask)
        touched = None if masks[0] is None else torch.stack(masks).any(dim=0)
        s = self.settings
        return combine(s.method, deltas, weights, s.density, s.seed, plan.name), touched


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


def _task_vectors(base: Path, chat: Path, ratio: float, settings: MergeSettings, stack: ExitStack) -> list[TaskVector]:
    sources = [("chat", base, chat, ratio)] + [(v.name, Path(v.base), Path(v.tuned), v.ratio) for v in settings.vectors]
    return [TaskVector(name, stack.enter_context(SafetensorsCheckpoint(b, settings.allow_pickle)),
                       stack.enter_context(SafetensorsCheckpoint(t, settings.allow_pickle)), r)
            for name, b, t, r in sources]


def merge_chat_vector(*, base: Path, chat: Path, cp: Path, out: Path, ratio: float, settings: MergeSettings,
                      report_path: Path | None = None, overwrite: bool = False) -> MergeReport:
    """Write CP + ratio * (chat - base) (and any further task vectors) to `out`, atomically, as sharded
    safetensors with the merged tokenizer; write the per-tensor report to `report_path` when given.

    `out` may be absent, empty or a previous merged model; anything else is refused (OutputExistsError)
    before a tensor is read, unless `overwrite` is set."""
    for folder in (base, chat, cp):
        require_folder(folder)
    if not overwrite:
        check_replaceable(out, MERGED_MODEL)
    with ExitStack() as stack:
        if is_peft_adapter(cp):
            out.parent.mkdir(parents=True, exist_ok=True)
            folded = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".cp-folded.", dir=out.parent)))
            cp = fold_adapter(cp, base, folded)
        vectors = _task_vectors(base, chat, ratio, settings, stack)
        inputs = {role: ck for v in vectors for role, ck in v.checkpoints().items()}
        check_architectures({"cp": read_config(cp), **{role: read_config(ck.model_dir) for role, ck in inputs.items()}})
        cp_ck = stack.enter_context(SafetensorsCheckpoint(cp, settings.allow_pickle))
        vocabulary_names = vocabulary_tensor_names(cp_ck, read_config(cp))
        chat_tokenizer = load_tokenizer(chat)
        tokenizer, added = merged_tokenizer(load_tokenizer(cp), chat_tokenizer)
        vocabulary = _plan_vocabulary(cp_ck, vectors, vocabulary_names, tokenizer, added, chat_tokenizer, settings)
        plans = plan_tensors(cp_ck, inputs, [v.ratio for v in vectors], settings.rules, vocabulary_names,
                             vocabulary.rows if vocabulary else 0)
        merger = _Merger(cp_ck, vectors[0].tuned, vectors, vocabulary, settings)
        with atomic_dir(out, MERGED_MODEL, overwrite) as staging:
            reports, files = _stream(plans, merger, staging, settings.shard_bytes(settings.max_shard_size),
                                     f"merge alpha={ratio}")
            _write_tokenizer_and_configs(tokenizer, chat_tokenizer, cp, chat, vocabulary.rows if vocabulary else None,
                                         staging)
    report = MergeReport(ratio, settings.method, settings.embedding_rows, [v.name for v in vectors],
                         _vocabulary_summary(vocabulary), files, reports)
    if report_path is not None:
        write_json_atomic(report_path, asdict(report))
    return report


def _plan_vocabulary(cp: SafetensorsCheckpoint, vectors: list[TaskVector], names: set[str],
                     tokenizer: PreTrainedTokenizerBase, added: list[str], chat_tokenizer: PreTrainedTokenizerBase,
                     settings: MergeSettings) -> VocabularyPlan | None:
    present = sorted(names & set(cp.names()))
    if not present:
        return None
    name = present[0]
    tokens: dict[Path, list[str | None]] = {}  # base and CP often share one tokenizer: read each once

    def tokens_of(checkpoint: SafetensorsCheckpoint) -> list[str | None]:
        key = checkpoint.model_dir.resolve()
        if key not in tokens:
            tokenizer, rows = load_tokenizer(checkpoint.model_dir), checkpoint.shape(name)[0]
            check_tokenizer_rows(checkpoint.model_dir, tokenizer, name, rows)
            tokens[key] = row_tokens(tokenizer, rows)
        return tokens[key]

    plan = plan_vocabulary(tokenizer, added, tokens_of(cp), tokens_of(vectors[0].tuned))
    specials = set(chat_special_tokens(chat_tokenizer))
    new_tokens = _new_token_pieces(cp.model_dir, tokens_of(cp)) if settings.embedding_rows == "overlap" else {}
    for vector in vectors:
        base_tokens, tuned_tokens = tokens_of(vector.base), tokens_of(vector.tuned)
        rows = plan.delta_rows(base_tokens, tuned_tokens, settings.embedding_rows, specials)
        vector.rows = plan.with_pieces(rows, new_tokens, base_tokens, tuned_tokens) if new_tokens else rows
    return plan


def _new_token_pieces(cp_dir: Path, cp_tokens: list[str | None]) -> dict[str, list[str]]:
    """The tokens CP added to its base's vocabulary (models/cp/new_tokens.json) and their pieces as token strings."""
    path = cp_dir / NEW_TOKENS
    if not path.exists():
        return {}
    try:
        mapping = json.loads(path.read_text())
        return {token: [cp_tokens[i] for i in row["pieces"]] for token, row in mapping.items()}
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise CheckpointError(f"{path}: not a token -> {{id, pieces}} mapping CP wrote: {error}") from None


@contextmanager
def _compute_threads(method: str) -> Iterator[None]:
    """One torch thread for streamed blocks: 1 MiB ops gain nothing from intra-op threads, which then compete
    with the writing thread (measured: 1.3 s against 1.5-2.3 s for a 0.93 GB merge on 2 cores)."""
    before = torch.get_num_threads()
    if method not in WHOLE_TENSOR_METHODS:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _stream(plans: list[TensorPlan], merger: _Merger, staging: Path, max_shard_size: int,
            label: str) -> tuple[list[TensorReport], list[str]]:
    by_name = {plan.name: plan for plan in plans}
    writer = ShardedSafetensorsWriter(staging, {p.name: p.meta for p in plans}, max_shard_size)
    total = sum(p.meta.numel() * p.meta.element_size() for p in plans)
    reports = []
    try:
        with _compute_threads(merger.settings.method), \
                tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024) as progress:
            for done, name in enumerate(writer.order(), start=1):
                reports.append(merger.tensor(by_name[name], writer.write, progress))
                progress.set_postfix_str(f"{done}/{len(plans)} tensors", refresh=False)
        files = writer.close()
    except BaseException:
        writer.abort()
        raise
    order = {name: i for i, name in enumerate(by_name)}
    return sorted(reports, key=lambda r: order[r.name]), files


def _vocabulary_summary(vocabulary: VocabularyPlan | None) -> dict[str, object]:
    if vocabulary is None:
        return {}
    return {"rows": vocabulary.rows, "rows_from_cp": int((vocabulary.cp != NO_ROW).sum()),
            "rows_from_chat": int((vocabulary.chat != NO_ROW).sum()), "added_tokens": vocabulary.added_tokens}
