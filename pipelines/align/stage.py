"""The `curate` stage: curate a small SFT set (LIMA) into data/sft, with its report. The stages that fine-tune on it
(align, finetune) are in pipelines/align/tune.py: curating needs no torch."""
from __future__ import annotations

from pathlib import Path

from pipelines.align.curation import Curation, curate
from pipelines.align.sft_set import SFT_FILE, read_sft_set, write_sft_set
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
