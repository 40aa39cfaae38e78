"""Model cards in the Hugging Face convention: a README.md with a YAML header, in every model folder the project
writes (CP, merged, aligned), readable by `huggingface_hub.ModelCard.load`.

The header names the models it was made from (`base_model`: their hub repo ids where known, from params or from
the sources' own cards, else their folders), tags, and the license when the sources' own cards agree on one; the
body says how it was made, with each source's path, hub id and fingerprint.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from pipelines.config import HUB_ID

CARD = "README.md"
SAMPLES, SAMPLE_BYTES = 64, 1 << 16  # 4 MiB read from each weights file, whatever its size


def weights_fingerprint(model_dir: Path) -> str:
    """A quick identity of a checkpoint: sha256 of its config and, for each weights file, its name, size and 64
    evenly spaced 64 KiB samples: any training step changes them, and a 16 GB model costs 4 MiB of reads a file,
    not a pass over every byte (DVC's md5 of a tracked folder is in dvc.lock)."""
    digest = hashlib.sha256()
    config = model_dir / "config.json"
    if config.exists():
        digest.update(config.read_bytes())
    for weights in sorted([*model_dir.glob("*.safetensors"), *model_dir.glob("*.bin")]):
        size = weights.stat().st_size
        digest.update(f"{weights.name}:{size}".encode())
        with weights.open("rb") as handle:
            for offset in sorted({size * i // SAMPLES for i in range(SAMPLES)}):
                handle.seek(offset)
                digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()[:16]


def _card_data(model_dir: Path) -> ModelCardData | None:
    """The header of a model folder's own card, if it has one."""
    card = model_dir / CARD
    if not card.exists():
        return None
    try:
        return ModelCard.load(card).data
    except (ValueError, OSError):  # a README that is not a model card
        return None


def card_origins(data: ModelCardData | None) -> list[str]:
    """The hub repo ids a card names as what its model was made from (`base_model`); the folder names chatgraft's
    cards give sources of no known id are not ids (no namespace)."""
    named = (data.base_model if data else None) or []
    return [name for name in ([named] if isinstance(named, str) else named) if re.fullmatch(HUB_ID, name)]


def _hub_cell(given: str | None, ids: list[str]) -> str:
    if given:
        return f"`{given}`"
    return "made from " + ", ".join(f"`{origin}`" for origin in ids) if ids else "none named"


def _shown(path: Path) -> Path:
    """A source's path as the card names it: relative to the working directory (a stage's is the project root) when
    inside it, so that a moved or copied project writes the same card, and the same output hash."""
    return path.relative_to(Path.cwd()) if path.is_absolute() and path.is_relative_to(Path.cwd()) else path


def write_model_card(folder: Path, *, title: str, made_by: str, sources: dict[str, Path], tags: list[str],
                     facts: dict[str, object], hub_ids: dict[str, str | None] | None = None) -> Path:
    """Write folder/README.md: `sources` (role -> model folder) become `base_model` and a table with their paths,
    hub ids, fingerprints and licenses, `facts` a table of how the model was made. A source's hub id is the one
    `hub_ids` (role -> id, from params) gives it, else those its own card names as its origin (`base_model`); in
    `base_model`, a source with neither is named by its folder."""
    cards = {role: _card_data(path) for role, path in sources.items()}
    given = {role: (hub_ids or {}).get(role) for role in sources}
    ids = {role: [given[role]] if given[role] else card_origins(cards[role]) for role in sources}
    licenses = {role: card.license if card else None for role, card in cards.items()}
    declared = sorted({license for license in licenses.values() if license})
    named = [name for role, path in sources.items() for name in ids[role] or [path.name]]
    data = ModelCardData(
        base_model=list(dict.fromkeys(named)), tags=["chatgraft", *tags], library_name="transformers",
        pipeline_tag="text-generation", license=declared[0] if len(declared) == 1 else ("other" if declared else None),
    )
    rows = "\n".join(f"| {role} | `{_shown(path)}` | `{weights_fingerprint(path)}` | "
                     f"{_hub_cell(given[role], ids[role])} | {licenses[role] or 'not stated'} |"
                     for role, path in sources.items())
    made = "\n".join(f"| {key} | {value} |" for key, value in facts.items())
    body = (f"# {title}\n\n{made_by}\n\n## Sources\n\n| role | path | fingerprint | hub model | license |\n"
            f"|---|---|---|---|---|\n{rows}\n\n## How it was made\n\n| | |\n|---|---|\n{made}\n")
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    card.save(folder / CARD)
    return folder / CARD


def with_evaluation(card_text: str, metrics: dict[str, float], scored_by: str) -> str:
    """The card with an `## Evaluation` section appended: each metric and its value, and what scored them (the card
    in the model folder is written before any evaluation, so the registered version's copy carries them)."""
    rows = "\n".join(f"| {name} | {value:.4g} |" for name, value in sorted(metrics.items()))
    return f"{card_text.rstrip()}\n\n## Evaluation\n\n{scored_by}\n\n| metric | value |\n|---|---|\n{rows}\n"
