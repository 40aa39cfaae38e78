"""The paper's comparison over seeds: `python -m benchmarks.seeds --world language --seeds 0 1 2 [--set KEY=VALUE]`.

Each seed is one `chatgraft run` of a scratch project (a clone of this repository under `--workdir`), every `seed`
key of params.yaml moved by the seed together (the recipe's draws: the world, the upstream pair, CP, the merge,
align and the fine-tuning), the world chosen by `data.world`, anything else by `--set`. Each run's leaderboard is
kept as `<workdir>/<world>/seed-<seed>.json` (a seed already kept is not run again), and the table gives each model's
answer accuracy, termination and language consistency (the target-language share on the language world) as mean
(min-max) over the seeds, as Markdown for the README.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import mean
from typing import Any

import yaml

REPOSITORY = Path(__file__).resolve().parents[1]
METRICS = {"answer_accuracy": "answer acc.", "termination_rate": "termination", "language_consistency": "language"}


def seed_keys(params: dict[str, Any], prefix: str = "") -> dict[str, int]:
    """Every `seed` of the params (dotted key -> value as written)."""
    found = {}
    for key, value in params.items():
        if isinstance(value, dict):
            found |= seed_keys(value, f"{prefix}{key}.")
        elif key == "seed":
            found[f"{prefix}{key}"] = value
    return found


def run_seed(project: Path, world: str, seed: int, overrides: list[str]) -> dict[str, Any]:
    """One `chatgraft run` of the project with every seed moved by `seed`; returns its leaderboard."""
    defaults = seed_keys(yaml.safe_load((REPOSITORY / "params.yaml").read_text()))
    settings = [f"data.world={world}", *(f"{key}={value + seed}" for key, value in defaults.items()),
                "flow.answers_view=false", *overrides]  # the view changes no score: the runs skip it
    command = [sys.executable, "-m", "flows", "run", "--project-dir", str(project)]
    subprocess.run([*command, *(arg for setting in settings for arg in ("--set", setting))], check=True)
    return json.loads((project / "reports" / "leaderboard.json").read_text())


def table(boards: dict[int, dict[str, Any]]) -> str:
    """Each model's metrics over the seeds, mean (min-max), in the first leaderboard's order."""
    models = list(next(iter(boards.values()))["candidates"])
    header = f"| model ({len(boards)} seeds) | " + " | ".join(METRICS.values()) + " |"
    lines = [header, "|---" * (len(METRICS) + 1) + "|"]
    for model in models:
        cells = []
        for metric in METRICS:
            values = [board["candidates"][model][metric] for board in boards.values()]
            cells.append(f"{mean(values):.3f} ({min(values):.3f}-{max(values):.3f})")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="domain", choices=["domain", "language"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "chatgraft-seeds")
    args = parser.parse_args()
    folder = args.workdir / args.world
    project = folder / "project"
    if not project.exists():
        subprocess.run(["git", "clone", "-q", str(REPOSITORY), str(project)], check=True)
    boards = {}
    for seed in args.seeds:
        kept = folder / f"seed-{seed}.json"
        if not kept.exists():
            kept.write_text(json.dumps(run_seed(project, args.world, seed, args.overrides), indent=1))
        boards[seed] = json.loads(kept.read_text())
    print(table(boards))


if __name__ == "__main__":
    main()
