"""The `curate` and `align@<method>` stages: curate a small SFT set (LIMA), then fine-tune the best merged model on it.

`curate` writes the curated set and its report; `align <method>` fine-tunes the merged model the `pick` stage chose
(pipelines/align/pick.py) and writes the folded model with a manifest.
"""
from __future__ import annotations

from pathlib import Path

from pipelines.align.curation import Curation, curate
from pipelines.align.sft_set import SFT_FILE, read_sft_set, write_sft_set
from pipelines.align.tune import align_model, best_class
from pipelines.atomic import write_json_atomic
from pipelines.config import AlignParams


def curate_sft_set(params: AlignParams, source: Path, out_dir: Path, report_path: Path) -> Curation:
    """Curate the SFT set at `source` into `out_dir`/sft.jsonl; the report (kept and dropped by reason) to
    `report_path`."""
    curation = curate(read_sft_set(source), params.curation)
    if not curation.kept:
        raise ValueError(f"{source}: curation (align.curation) kept no example: {curation.report['dropped']}")
    write_sft_set(out_dir / SFT_FILE, curation.kept)
    write_json_atomic(report_path, curation.report)
    return curation


def align_best_merged(*, method: str, params: AlignParams, sft_dir: Path, merged_name: str, merged_dir: Path,
                      out_dir: Path, metrics_path: Path, curve_csv: Path) -> None:
    """Fine-tune `merged_dir` with `method` into `out_dir` (with a manifest naming its source); metrics to
    `metrics_path`."""
    examples = read_sft_set(sft_dir / SFT_FILE)
    manifest = {"method": method, "from": merged_name, "examples": len(examples),
                **({"class_weights": params.class_weights, "condition": best_class(params.class_weights)}
                   if method == "c-rlft" else {})}
    result = align_model(method, params, examples, merged_dir, out_dir, curve_csv, manifest)
    write_json_atomic(metrics_path, {"train_loss": result.train_loss, "tokens_per_second": result.tokens_per_second,
                                     "steps": result.steps, "examples": len(examples)})
