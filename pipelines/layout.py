"""Where every stage reads and writes, relative to the project root; dvc.yaml names the same paths."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

NEW_TOKENS = "new_tokens.json"  # in a CP model: tokens CP added -> their id and the base tokenizer's pieces
ALIGN_MANIFEST = "align.json"  # in an aligned model: the method and the merged model it was tuned from


@dataclass(frozen=True)
class Layout:
    """The project's file layout under `root`."""

    root: Path

    @property
    def corpus(self) -> Path:
        return self.root / "data" / "corpus"

    @property
    def incoming(self) -> Path:
        """The inbox snapshot: corpus files the flow took in, the output of the `inbox` stage."""
        return self.root / "data" / "incoming"

    @property
    def documents(self) -> Path:
        """The imported corpus of `data.source: documents` (`dvc import-url` of `data.documents`)."""
        return self.root / "data" / "documents" / "imported"

    @property
    def intake_report(self) -> Path:
        """What the last intake took from the inbox, left there, and refused (with reasons)."""
        return self.root / "reports" / "intake.json"

    @property
    def upstream_report(self) -> Path:
        """The base/chat pair check the upstream stage writes (reports/upstream.json)."""
        return self.root / "reports" / "upstream.json"

    @property
    def upstream(self) -> Path:
        return self.root / "models" / "upstream"

    @property
    def cp_model(self) -> Path:
        return self.root / "models" / "cp"

    @property
    def datasets_cache(self) -> Path:
        """Tokenized, packed text as Arrow files, reused while the text, tokenizer and block size are the same."""
        return self.root / ".cache" / "datasets"

    @property
    def cp_checkpoints(self) -> Path:
        return self.root / "checkpoints" / "cp"

    def merged_model(self, ratio: str) -> Path:
        return self.root / "models" / "merged" / f"alpha-{ratio}"

    def merge_report(self, ratio: str) -> Path:
        return self.root / "reports" / "merge" / f"alpha-{ratio}.json"

    @property
    def sft_set(self) -> Path:
        """The curated SFT set the align stages train on."""
        return self.root / "data" / "sft"

    def aligned_model(self, method: str) -> Path:
        return self.root / "models" / "aligned" / method

    def finetuned_model(self, method: str) -> Path:
        """CP fine-tuned with `method` on the curated SFT set, before a chat vector is added."""
        return self.root / "models" / "finetuned" / method

    def finetuned_merged_model(self, method: str, ratio: str) -> Path:
        return self.root / "models" / "finetuned-merged" / f"{method}-alpha-{ratio}"

    def finetuned_merge_report(self, method: str, ratio: str) -> Path:
        return self.root / "reports" / "merge" / f"finetuned-{method}-alpha-{ratio}.json"

    @property
    def merged_eval_metrics(self) -> Path:
        """The merged models' scores, a folder of their own: all the align stages read to pick the best one."""
        return self.root / "metrics" / "eval" / "merged"

    def eval_metrics(self, candidate: str) -> Path:
        """Where `candidate`'s scores go, the DVC metrics a run is compared by: metrics/eval, merged models' in
        metrics/eval/merged (what the align stages read), aligned models' in metrics/eval/aligned, models fine-tuned
        before their merge in metrics/eval/finetuned."""
        from pipelines.candidates import ALIGNED_PREFIX, FINETUNED_PREFIX, MERGED_PREFIX  # it names Layout: here

        if candidate.startswith(ALIGNED_PREFIX):
            return self.root / "metrics" / "eval" / "aligned" / f"{candidate}.json"
        if candidate.startswith(FINETUNED_PREFIX):
            return self.root / "metrics" / "eval" / "finetuned" / f"{candidate}.json"
        if candidate.startswith(MERGED_PREFIX):
            return self.merged_eval_metrics / f"{candidate}.json"
        return self.root / "metrics" / "eval" / f"{candidate}.json"

    def speed_report(self, candidate: str) -> Path:
        """`candidate`'s generation speed (answers a second): a wall-clock figure that differs on every run, so
        apart from the scores that later stages depend on."""
        return self.reports / "speed" / f"{candidate}.json"

    def stage_report(self, name: str) -> Path:
        """A stage's own figures (corpus counts, training losses and speed, curation): reports/<name>.json, kept
        out of the DVC metrics, which compare the models."""
        return self.reports / f"{name}.json"

    def eval_samples(self, candidate: str) -> Path:
        return self.root / "reports" / "samples" / f"{candidate}.jsonl"

    @property
    def leaderboard(self) -> Path:
        """The DVC metric of the ranking: the winner and its primary metric."""
        return self.root / "metrics" / "leaderboard.json"

    @property
    def leaderboard_report(self) -> Path:
        """Every model's row in rank order: role, guardrail verdict, metrics (what the flow reads)."""
        return self.reports / "leaderboard.json"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

