"""The leaderboard as markdown: for the Prefect artifact, the version description and the terminal."""
from __future__ import annotations

from typing import Any

from flows.tracking.version_pages import EMPTY, metric_order
from pipelines.leaderboard import Leaderboard, LeaderboardRow


def metric_columns(board: Leaderboard) -> list[str]:
    """Every metric any candidate has: the primary one and the guardrails' usual ones first, the rest sorted."""
    return metric_order((key for row in board.rows for key in row.metrics), board.primary_metric)


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


def version_markdown(version: str, row: LeaderboardRow, leaderboard_md: str) -> str:
    """A registered version's description, for a person in the registry: the place of its status part (its status,
    its scores beside the current champion's, how to promote it: `registry.describe_version` writes it and each
    decision rewrites it), its guardrail verdict at registration, then the whole leaderboard of its run."""
    verdict = "all met" if row.eligible else "; ".join(row.violations)
    return "\n".join([f"## Version {version}: {row.name}", "", EMPTY, "", f"**guardrails at registration:** {verdict}",
                      "", "### The leaderboard of the run that registered it", "", leaderboard_md])
