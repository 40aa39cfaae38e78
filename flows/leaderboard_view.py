"""The leaderboard as markdown: for the Prefect artifact, the version description and the terminal."""
from __future__ import annotations

from typing import Any

COLUMNS = ("answer_accuracy", "termination_rate", "repetition_rate", "target_perplexity")


def leaderboard_markdown(board: dict[str, Any], decision: str = "") -> str:
    """A table of every candidate in rank order, then the winner, why, and the promotion decision."""
    rows = sorted(board["candidates"].items(), key=lambda item: item[1]["rank"])
    lines = [
        "| rank | candidate | " + " | ".join(COLUMNS) + " | guardrails |",
        "|---" * (len(COLUMNS) + 3) + "|",
    ]
    for name, row in rows:
        cells = " | ".join(f"{row[c]:.3f}" if isinstance(row.get(c), float) else "-" for c in COLUMNS)
        checks = "met" if row["eligible"] else "; ".join(row["violations"])
        lines.append(f"| {row['rank']} | {name} | {cells} | {checks} |")
    lines += ["", f"**winner:** {board['winner'] or 'none'} ({board['reason']})"]
    if decision:
        lines.append(f"**promotion:** {decision}")
    return "\n".join(lines)
