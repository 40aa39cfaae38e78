"""Model cards in the Hugging Face convention: a README.md with a YAML header, in every model folder the project
writes (CP, merged, aligned), readable by `huggingface_hub.ModelCard.load`.

The header names the models it was made from (`base_model`), tags, and the license when the sources' own cards
agree on one; the body says how it was made, with a fingerprint of each source.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

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


def source_license(model_dir: Path) -> str | None:
    """The license a source's own model card declares, if it has one."""
    card = model_dir / CARD
    if not card.exists():
        return None
    try:
        return ModelCard.load(card).data.license
    except (ValueError, OSError):  # a README that is not a model card
        return None


def write_model_card(folder: Path, *, title: str, made_by: str, sources: dict[str, Path], tags: list[str],
                     facts: dict[str, object]) -> Path:
    """Write folder/README.md: `sources` (role -> model folder) become `base_model` and a table with their
    fingerprints and licenses, `facts` a table of how the model was made."""
    licenses = {role: source_license(path) for role, path in sources.items()}
    declared = sorted({license for license in licenses.values() if license})
    data = ModelCardData(
        base_model=[path.name for path in sources.values()], tags=["chatgraft", *tags], library_name="transformers",
        pipeline_tag="text-generation", license=declared[0] if len(declared) == 1 else ("other" if declared else None),
    )
    rows = "\n".join(f"| {role} | `{path}` | `{weights_fingerprint(path)}` | {licenses[role] or 'not stated'} |"
                     for role, path in sources.items())
    made = "\n".join(f"| {key} | {value} |" for key, value in facts.items())
    body = (f"# {title}\n\n{made_by}\n\n## Sources\n\n| role | path | fingerprint | license |\n|---|---|---|---|\n"
            f"{rows}\n\n## How it was made\n\n| | |\n|---|---|\n{made}\n")
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    card.save(folder / CARD)
    return folder / CARD


def with_evaluation(card_text: str, metrics: dict[str, float], scored_by: str) -> str:
    """The card with an `## Evaluation` section appended: each metric and its value, and what scored them (the card
    in the model folder is written before any evaluation, so the registered version's copy carries them)."""
    rows = "\n".join(f"| {name} | {value:.4g} |" for name, value in sorted(metrics.items()))
    return f"{card_text.rstrip()}\n\n## Evaluation\n\n{scored_by}\n\n| metric | value |\n|---|---|\n{rows}\n"
