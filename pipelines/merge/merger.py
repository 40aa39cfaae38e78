"""The streaming merge: each output tensor computed in fp32 blocks of about CHUNK_ELEMENTS values (whole tensors
for the methods that need them), cast to the CP tensor's dtype and handed to the shard writer, so memory stays a
few blocks whatever the model size."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from pipelines.config import MergeSettings
from pipelines.merge.checkpoint import CheckpointError, SafetensorsCheckpoint
from pipelines.merge.methods import CombineOptions, combine
from pipelines.merge.plan import TensorPlan
from pipelines.merge.registry import METHODS
from pipelines.merge.report import TensorReport
from pipelines.merge.task_vector import TaskVector
from pipelines.merge.vocabulary import NO_ROW, DeltaRows, VocabularyPlan
from pipelines.merge.writer import ShardedSafetensorsWriter

CHUNK_ELEMENTS = 1 << 18  # fp32 blocks of 1 MiB stay in cache across the few passes of the arithmetic


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


class TensorMerger:
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

    def _vocabulary_plan(self, plan: TensorPlan) -> VocabularyPlan:
        if self.vocabulary is None:  # plan_tensors marks vocabulary tensors only when there is a vocabulary plan
            raise CheckpointError(f"tensor {plan.name!r}: a vocabulary matrix without a vocabulary plan")
        return self.vocabulary

    @staticmethod
    def _delta_rows(vector: TaskVector, plan: TensorPlan) -> DeltaRows:
        if vector.rows is None:
            raise CheckpointError(f"tensor {plan.name!r}: the {vector.name} vector has no vocabulary rows planned")
        return vector.rows

    def _start_rows(self, plan: TensorPlan, block: slice) -> torch.Tensor:
        """The CP values of a block (read-only), with the chat model's rows for tokens new to CP."""
        cp = self._matrix(self.cp, plan)
        if not plan.vocabulary:
            return _rows(cp, None, block)
        vocabulary = self._vocabulary_plan(plan)
        source = vocabulary.cp[block]
        from_cp = source != NO_ROW
        if bool(from_cp.all()):
            return _rows(cp, vocabulary.cp, block)
        rows = torch.empty((source.numel(), *cp.shape[1:]), dtype=cp.dtype)
        rows[from_cp] = cp[source[from_cp]]
        rows[~from_cp] = self.chat.get(plan.name)[vocabulary.chat[block][~from_cp]]
        return rows

    def _delta(self, vector: TaskVector, plan: TensorPlan, block: slice) -> tuple[torch.Tensor, torch.Tensor | None]:
        """tuned - base in fp32 for a block, and which rows have one (vocabulary matrices only)."""
        base, tuned = self._matrix(vector.base, plan), self._matrix(vector.tuned, plan)
        if not plan.vocabulary:
            # in-place ops with a bf16/fp16 operand compute in fp32 (exact upcast): no second fp32 copy
            return _fp32(_rows(tuned, None, block)).sub_(_rows(base, None, block)), None
        rows = self._delta_rows(vector, plan)
        direct = rows.direct[block]
        if bool(direct.all()):
            return _fp32(_rows(tuned, rows.tuned, block)).sub_(_rows(base, rows.base, block)), direct
        delta = torch.zeros((direct.numel(), *tuned.shape[1:]), dtype=torch.float32)
        delta[direct] = _fp32(tuned[rows.tuned[block][direct]]).sub_(base[rows.base[block][direct]])
        for row, (base_rows, tuned_rows) in rows.pieces.items():
            if block.start <= row < block.stop:
                delta[row - block.start] = _fp32(tuned[tuned_rows]).sub_(base[base_rows]).mean(dim=0)
        return delta, rows.mask[block]

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

    def tensor(self, plan: TensorPlan, write: Callable[[str, torch.Tensor], None], progress: tqdm) -> TensorReport:
        """Merge one tensor, handing each finished block to `write`."""
        rows, row_len = (plan.meta.shape[0], math.prod(plan.meta.shape[1:])) if plan.vocabulary \
            else (plan.meta.numel(), 1)
        whole = METHODS[self.settings.method].whole_tensor
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
        return combine(s.method, deltas, weights, CombineOptions(s.density, s.seed, plan.name)), touched


@contextmanager
def _compute_threads(method: str) -> Iterator[None]:
    """One torch thread for streamed blocks: 1 MiB ops gain nothing from intra-op threads, which then compete
    with the writing thread (measured: 1.3 s against 1.5-2.3 s for a 0.93 GB merge on 2 cores)."""
    before = torch.get_num_threads()
    if not METHODS[method].whole_tensor:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def stream_merge(plans: list[TensorPlan], merger: TensorMerger, staging: Path, max_shard_size: int,
                 label: str) -> tuple[list[TensorReport], list[str]]:
    """Merge every planned tensor into sharded safetensors under `staging`, in the writer's order, with a progress
    bar; the tensors' reports in plan order and the files written. A failure removes the partial shards."""
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
