"""The leaderboard as markdown: for the Prefect artifact, the version description and the terminal."""
from __future__ import annotations

from typing import Any

from pipelines.leaderboard import Leaderboard, LeaderboardRow
from pipelines.promotion import Champion

FIRST = ("answer_accuracy", "termination_rate", "repetition_rate", "target_perplexity")


def metric_columns(board: Leaderboard) -> list[str]:
    """Every metric any candidate has: the primary one and the guardrails' usual ones first, the rest sorted."""
    present = {key for row in board.rows for key in row.metrics}
    first = [board.primary_metric] + [c for c in FIRST if c != board.primary_metric]
    ordered = [c for c in first if c in present]
    return ordered + sorted(present - set(ordered))


def leaderboard_markdown(board: Leaderboard, decision: str = "") -> str:
    """A table of every candidate in rank order with every metric, then the winner, why, and the decision."""
    columns = metric_columns(board)
    lines = [
        "| rank | candidate | " + " | ".join(columns) + " | guardrails |",
        "|---" * (len(columns) + 3) + "|",
    ]
    for row in board.rows:
        value = row.metrics.get
        cells = " | ".join(f"{value(c):.3f}" if isinstance(value(c), (int, float)) else "-" for c in columns)
        checks = "met" if row.eligible else "; ".join(row.violations)
        lines.append(f"| {row.rank} | {row.name} | {cells} | {checks} |")
    lines += ["", f"**winner:** {board.winner or 'none'} ({board.reason})"]
    if decision:
        lines.append(f"**promotion:** {decision}")
    return "\n".join(lines)


def promotion_markdown(version: str | None, decision: Any) -> str:
    """The promotion decision and each reason, one per line (a Decision, or None when nothing was registered)."""
    if version is None or decision is None:
        return "## Promotion\n\nNo candidate met the guardrails: nothing registered, nothing promoted."
    verdict = "promoted to **champion**" if decision.promote else "**not promoted**"
    return "\n".join([f"## Promotion\n\nVersion {version}: {verdict}.\n", *(f"- {r}" for r in decision.reasons)])


def version_markdown(model: str, version: str, row: LeaderboardRow, champion: Champion | None, columns: list[str],
                     leaderboard_md: str) -> str:
    """A registered version's description, for a person in the registry: its scores beside the champion's (at
    registration), its guardrail verdict, how to promote it, then the whole leaderboard of its run."""
    held = f"champion (version {champion.version})" if champion else "champion (none yet)"
    lines = [f"## Version {version}: {row.name}", "", f"| metric | {held} | this version |", "|---|---|---|"]
    for column in columns:
        mine, theirs = row.metrics.get(column), champion.metrics.get(column) if champion else None
        lines.append(f"| {column} | {_cell(theirs)} | {_cell(mine)} |")
    verdict = "all met" if row.eligible else "; ".join(row.violations)
    lines += ["", f"**guardrails:** {verdict}", "",
              f"To make it champion: `chatgraft promote {version} --reason \"...\"`, or in the MLflow UI: Models > "
              f"{model} > Version {version} > Aliases > add `champion` (in the UI `chatgraft ui` opens, the move is "
              "recorded, and undone when the version breaks a guardrail).", "",
              "### The leaderboard of the run that registered it", "", leaderboard_md]
    return "\n".join(lines)


def _cell(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "-"
