"""The registry at a glance, for `chatgraft status`: every version with its aliases, pin, latest decision and
primary metric, then where the champion came from (code, data, sources, runs, the machine it was scored on), and a
note when that machine was of another kind than this one."""
from __future__ import annotations

from dataclasses import dataclass

from flows.environment_lineage import MACHINE_TAGS, machine_notice, machine_tags
from flows.tracking import registry
from flows.tracking.store import Store

LINEAGE = (("candidate", "candidate"), ("git_sha", "code (git)"), ("dvc_data_md5", "corpus (DVC md5)"),
           (registry.MODEL_MD5_TAG, "weights (DVC md5)"), ("source.base", "base"), ("source.chat", "chat"),
           ("source.cp", "continually pretrained"), ("finetune_method", "CP fine-tuned with"),
           ("merge_ratio", "merge ratio"),
           ("align_method", "aligned with"), ("dvc_experiment", "DVC experiment"),
           ("prefect_flow_run_id", "Prefect flow run"), *MACHINE_TAGS.items(), ("env.threads", "torch threads"),
           ("env.packages_sha256", "packages (sha256)"))


@dataclass(frozen=True)
class VersionLine:
    """One version as `chatgraft status` shows it."""

    version: str
    aliases: str
    pinned: bool
    candidate: str
    metric: float | None
    decision: str


def version_lines(store: Store, model: str, metric: str) -> list[VersionLine]:
    """Every version of `model`, newest first, with its standing."""
    aliases = registry.aliases(store, model)
    lines = []
    for held in registry.versions(store, model):
        tags = held.tags
        standing = registry.version_standing(store, model, str(held.version))
        decision = tags.get("promotion.decision", "no decision yet")
        if tags.get(registry.INCOMPLETE_TAG) == "true":
            decision = "incomplete (a killed run left it without lineage)"
        held_aliases = sorted(alias for alias, version in aliases.items() if version == str(held.version))
        lines.append(VersionLine(str(held.version), ", ".join(held_aliases) or "-", standing.pinned,
                                 tags.get("candidate", "?"), standing.metrics.get(metric), decision))
    return lines


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return ["  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[-1]]).rstrip() for row in rows]


def registry_overview(store: Store, model: str, metric: str) -> str:
    """The versions table and the champion's lineage, as plain text."""
    lines = version_lines(store, model, metric)
    if not lines:
        return f"{model}: no version registered yet (`chatgraft run` registers the leaderboard's winner)"
    rows = [("version", "aliases", "pinned", "candidate", metric, "latest decision")]
    rows += [(line.version, line.aliases, "yes" if line.pinned else "no", line.candidate,
              "-" if line.metric is None else f"{line.metric:.3f}", line.decision) for line in lines]
    text = [f"{model} ({store.uri})", "", *_table(rows), ""]
    champion = registry.alias_holder(store, model, registry.CHAMPION)
    if champion is None:
        return "\n".join([*text, "champion: none (`chatgraft promote VERSION` or the MLflow UI sets one)"])
    tags = registry.version_tags(store, model, champion)
    lineage = [(label, tags[key]) for key, label in LINEAGE if tags.get(key)]
    run_id = registry.registering_run(store, model, champion)
    lineage.append(("registered by MLflow run", run_id or "unknown"))
    text += [f"champion: version {champion}", *_table([("", label, value) for label, value in lineage])]
    return "\n".join([*text, *_machine_line(tags)])


def _machine_line(tags: dict[str, str]) -> list[str]:
    """The notice that the champion was scored on another kind of machine, when it was (reading this machine's only
    when the champion recorded its own)."""
    notice = machine_notice(tags, machine_tags()) if MACHINE_TAGS.keys() & tags.keys() else None
    return ["", notice] if notice else []
