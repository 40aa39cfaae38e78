"""The `plots` stage: the run's figures as PNG images, DVC plots whose page needs no internet (`dvc plots show`)
and the same files on the stage's MLflow run.

- plots/ratio_sweep.png: the chat-vector paper's figure, each rate and the held-out perplexity against the ratio
  (ratio 0 is the CP model itself), chat's values dashed for reference;
- plots/candidates.png: every evaluated model's rates side by side, the leaderboard's winner named (a rate that is 0
  for every model has no bar to see: it is named in a note instead of the legend);
- plots/cp_loss.png, upstream_loss.png, align_loss.png: the training curves the stages wrote as CSV (train and
  held-out loss against the step; the held-out curve is labelled as text never trained on, which may rise while
  the training loss falls).
"""
from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a stage's machine
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pipelines.atomic import atomic_file  # noqa: E402
from pipelines.candidates import MERGED_PREFIX  # noqa: E402

SWEEP_RATES = ("answer_accuracy", "termination_rate", "repetition_rate", "language_consistency")
SIDE_BY_SIDE = ("answer_accuracy", "termination_rate", "language_consistency", "multiturn_accuracy",
                "refusal_rate", "false_refusal_rate")
PERPLEXITY = "target_perplexity"
LOSS_NAMES = {"loss": "train loss", "eval_loss": "held-out loss (never trained on)"}
HELD_OUT_NOTE = ("Held-out loss: on text never trained on (documents held out by hash; in the default world, the "
                 "facts asked and answered, a phrasing CP never trains on). It can rise while the training loss falls: "
                 "what the training text does not teach stays unlearned while the model grows surer of what it was "
                 "taught.")


def save_figure(figure: Figure, path: Path) -> None:
    """Write `figure` as a PNG atomically and close it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    with atomic_file(path, binary=True) as handle:
        handle.write(buffer.getvalue())


def ratio_sweep_figure(scores: dict[str, dict[str, Any]]) -> Figure:
    """Rates (left) and held-out perplexity (right) against the merge ratio, from `candidate -> metrics`; the CP
    model is ratio 0, chat's values are dashed lines."""
    merged = sorted(((float(name.removeprefix(MERGED_PREFIX)), metrics) for name, metrics in scores.items()
                     if name.startswith(MERGED_PREFIX)), key=lambda pair: pair[0])
    x, rows = [0.0, *(ratio for ratio, _ in merged)], [scores["cp"], *(metrics for _, metrics in merged)]
    figure, (rates, perplexity) = plt.subplots(1, 2, figsize=(11, 4))
    for metric in (m for m in SWEEP_RATES if all(m in row for row in rows)):
        line, = rates.plot(x, [row[metric] for row in rows], marker="o", label=metric)
        if metric in scores.get("chat", {}):
            rates.axhline(scores["chat"][metric], color=line.get_color(), linestyle="--", linewidth=0.8)
    rates.set(xlabel="ratio (0: CP)", ylabel="share of answers", ylim=(-0.03, 1.03),
              title="CP + ratio x (chat - base); dashed: chat")
    rates.legend(fontsize=8)
    if all(PERPLEXITY in row for row in rows):
        perplexity.plot(x, [row[PERPLEXITY] for row in rows], marker="o", color="black", label="merged")
        for reference, style in (("base", ":"), ("chat", "--")):
            if PERPLEXITY in scores.get(reference, {}):
                perplexity.axhline(scores[reference][PERPLEXITY], linestyle=style, color="grey", label=reference)
        perplexity.legend(fontsize=8)
    perplexity.set(xlabel="ratio (0: CP)", ylabel="perplexity", title="held-out target perplexity")
    figure.tight_layout()
    return figure


def candidates_figure(scores: dict[str, dict[str, Any]], winner: str | None) -> Figure:
    """Each candidate's rates as grouped bars, in the given order; the winner in the title."""
    frame = pd.DataFrame(scores).T
    frame = frame[[metric for metric in SIDE_BY_SIDE if metric in frame.columns]].astype(float)
    zero = [metric for metric in frame.columns if frame[metric].eq(0).all()]  # bars of height 0: nothing to see
    frame = frame.drop(columns=zero)
    figure, axis = plt.subplots(figsize=(max(6.0, 1.2 * len(frame)) + 2.0, 4))
    if not frame.columns.empty:
        frame.plot.bar(ax=axis, rot=20, ylim=(0, 1.05), width=0.8)
        axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
    axis.set(ylabel="share of answers", title=f"candidates side by side (winner: {winner or 'none'})")
    if zero:
        axis.text(1.01, 0.0, "0 for every model\n(no bar):\n" + "\n".join(zero), transform=axis.transAxes,
                  fontsize=8, va="bottom")
    figure.tight_layout()
    return figure


def loss_figure(curves: dict[str, Path], title: str) -> Figure:
    """Every loss column of each training curve CSV (`label -> file`) against the step, on one axis (held-out
    losses are logged less often: their points are marked); a held-out curve comes with a note on what it measures."""
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for label, csv_path in curves.items():
        frame = pd.read_csv(csv_path) if csv_path.exists() else pd.DataFrame()
        for column in (c for c in frame.columns if "loss" in c and frame[c].notna().any()):
            points = frame[["step", column]].dropna()
            axis.plot(points["step"], points[column], marker="o" if len(points) < 20 else None,
                      label=f"{label} {LOSS_NAMES.get(column, column)}")
    if axis.lines:
        axis.legend(fontsize=8)
    else:  # checkpoints given, or no method: nothing was trained here
        axis.text(0.5, 0.5, "nothing trained", ha="center", va="center", transform=axis.transAxes)
    axis.set(xlabel="step", ylabel="loss", title=title)
    held_out = any(line.get_label().endswith(LOSS_NAMES["eval_loss"]) for line in axis.lines)
    if held_out:
        figure.text(0.01, 0.01, textwrap.fill(HELD_OUT_NOTE, 110), fontsize=7, va="bottom")
    figure.tight_layout(rect=(0, 0.12 if held_out else 0, 1, 1))
    return figure


def draw_plots(metric_files: dict[str, Path], leaderboard: Path, curves: dict[str, dict[str, Path]],
               out_dir: Path) -> list[Path]:
    """Draw the sweep and the side-by-side figure from each candidate's metrics (`name -> file`, in leaderboard
    order) and one loss figure per group of training curves (`figure name -> label -> CSV`) into `out_dir`;
    returns the images written."""
    scores = {name: json.loads(path.read_text()) for name, path in metric_files.items()}
    winner = json.loads(leaderboard.read_text())["winner"]["name"]
    figures = {"ratio_sweep": ratio_sweep_figure(scores), "candidates": candidates_figure(scores, winner)}
    figures |= {name: loss_figure(group, name.replace("_", " ")) for name, group in curves.items()}
    for name, figure in figures.items():
        save_figure(figure, out_dir / f"{name}.png")
    return [out_dir / f"{name}.png" for name in figures]
