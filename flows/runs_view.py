"""`chatgraft runs`: the project's runs (its DVC experiments) in 120 columns, where `dvc exp show` needs 250: each
run's name, when it was saved, the leaderboard's winner and primary metric, and only the params it ran with that
differ from params.yaml now."""
from __future__ import annotations

import json
import textwrap
from itertools import zip_longest
from typing import Any

from flows.dvc_project import Experiment

WIDTH = 120
GAP = "  "
LEADERBOARD = "metrics/leaderboard.json"  # the leaderboard stage's DVC metric: the winner and its primary metric
CAPS = {"run": 28, "winner": 18, "score": 22}  # the params column takes what they leave
PARAMS_HEADER = "params that differ from params.yaml now"


def _value(value: Any) -> str:
    """A param's value as short as YAML would write it, without spaces inside lists (the column wraps at spaces)."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def changed_params(run: Experiment, reference: Experiment) -> list[str]:
    """`key=value` for each param whose value in `run` differs from `reference` (`key=(unset)` where the run has
    none), in params.yaml's order."""
    keys = [*run.params, *(key for key in reference.params if key not in run.params)]
    return [f"{key}={_value(run.params[key]) if key in run.params else '(unset)'}" for key in keys
            if run.params.get(key, ...) != reference.params.get(key, ...)]


def _winner(run: Experiment) -> tuple[str, str | None, Any]:
    """The winner's name ('none' when no model met the guardrails), its primary metric's name and value."""
    winner = run.metrics.get(LEADERBOARD, {}).get("winner") or {}
    metric, value = next(((key, value) for key, value in winner.items() if key != "name"), (None, None))
    return winner.get("name") or "none", metric, value


def _score(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "-" if value is None else str(value)


def _lines(row: list[str], widths: list[int]) -> list[str]:
    """One table row, each cell wrapped within its column's width, its further lines indented (a row may take
    several lines; nothing is cut)."""
    cells = [textwrap.wrap(cell, width, subsequent_indent=GAP) or [""] for cell, width in zip(row, widths)]
    return [GAP.join(part.ljust(width) for part, width in zip(parts, widths)).rstrip()
            for parts in zip_longest(*cells, fillvalue="")]


def runs_table(workspace: Experiment, runs: list[Experiment]) -> str:
    """Every run, oldest first, as a table no wider than WIDTH: run, when, winner, the winner's primary metric
    (named in the header; in each cell when runs ranked by different ones), the params changed from `workspace`'s."""
    if not runs:
        return "no run saved yet: each `chatgraft run` saves itself as a DVC experiment"
    winners = [_winner(run) for run in runs]
    metrics = {metric for _, metric, _ in winners if metric}
    one_metric = len(metrics) <= 1
    rows = [["run", "when", "winner", next(iter(metrics)) if metrics and one_metric else "score", PARAMS_HEADER]]
    rows += [[run.name, f"{run.created:%Y-%m-%d %H:%M}" if run.created else "-", name,
              _score(value) if one_metric else f"{metric} {_score(value)}",
              " ".join(changed_params(run, workspace)) or "(none)"]
             for run, (name, metric, value) in zip(runs, winners)]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    widths = [min(width, CAPS.get(header, width)) for width, header in zip(widths, ("run", "when", "winner", "score"))]
    widths.append(WIDTH - sum(widths) - len(GAP) * len(widths))
    return "\n".join(line for row in rows for line in _lines(row, widths))
