"""The leaderboard as markdown: for the Prefect artifact, the version description and the terminal."""
from __future__ import annotations

from typing import Any

FIRST = ("answer_accuracy", "termination_rate", "repetition_rate", "target_perplexity")
NOT_METRICS = {"rank", "role", "eligible", "violations"}


def metric_columns(board: dict[str, Any]) -> list[str]:
    """Every metric any candidate has: the primary one and the guardrails' usual ones first, the rest sorted."""
    present = {key for row in board["candidates"].values() for key in row} - NOT_METRICS
    first = [board.get("primary_metric")] + [c for c in FIRST if c != board.get("primary_metric")]
    ordered = [c for c in first if c in present]
    return ordered + sorted(present - set(ordered))


def leaderboard_markdown(board: dict[str, Any], decision: str = "") -> str:
    """A table of every candidate in rank order with every metric, then the winner, why, and the decision."""
    rows = sorted(board["candidates"].items(), key=lambda item: item[1]["rank"])
    columns = metric_columns(board)
    lines = [
        "| rank | candidate | " + " | ".join(columns) + " | guardrails |",
        "|---" * (len(columns) + 3) + "|",
    ]
    for name, row in rows:
        cells = " | ".join(f"{row[c]:.3f}" if isinstance(row.get(c), (int, float)) else "-" for c in columns)
        checks = "met" if row["eligible"] else "; ".join(row["violations"])
        lines.append(f"| {row['rank']} | {name} | {cells} | {checks} |")
    lines += ["", f"**winner:** {board['winner'] or 'none'} ({board['reason']})"]
    if decision:
        lines.append(f"**promotion:** {decision}")
    return "\n".join(lines)


def promotion_markdown(version: str | None, decision: Any) -> str:
    """The promotion decision and each reason, one per line (a Decision, or None when nothing was registered)."""
    if version is None or decision is None:
        return "## Promotion\n\nNo candidate met the guardrails: nothing registered, nothing promoted."
    verdict = "promoted to **champion**" if decision.promote else "**not promoted**"
    return "\n".join([f"## Promotion\n\nVersion {version}: {verdict}.\n", *(f"- {r}" for r in decision.reasons)])
