"""The plots stage's figures: the ratio sweep's points are the candidates' scores, every image is a PNG."""
from __future__ import annotations

import json
from pathlib import Path

from pipelines.plots import candidates_figure, draw_plots, loss_figure, ratio_sweep_figure

SCORES = {
    "base": {"answer_accuracy": 0.0, "termination_rate": 1.0, "target_perplexity": 10.0},
    "chat": {"answer_accuracy": 0.1, "termination_rate": 1.0, "target_perplexity": 12.0},
    "cp": {"answer_accuracy": 0.2, "termination_rate": 0.0, "target_perplexity": 5.0},
    "merged-1.0": {"answer_accuracy": 0.4, "termination_rate": 1.0, "target_perplexity": 12.5},
    "merged-0.5": {"answer_accuracy": 0.3, "termination_rate": 0.6, "target_perplexity": 8.0},
}


def test_the_sweep_plots_each_rate_and_the_perplexity_against_the_ratio() -> None:
    rates, perplexity = ratio_sweep_figure(SCORES).axes
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in rates.lines}
    assert lines["answer_accuracy"] == ([0.0, 0.5, 1.0], [0.2, 0.3, 0.4])  # ratio 0 is CP, ratios in order
    assert lines["termination_rate"][1] == [0.0, 0.6, 1.0]
    merged = next(line for line in perplexity.lines if line.get_label() == "merged")
    assert list(merged.get_ydata()) == [5.0, 8.0, 12.5]


def test_every_figure_is_written_as_a_png(tmp_path: Path) -> None:
    files = {}
    for name, metrics in SCORES.items():
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(metrics))
    (tmp_path / "board.json").write_text(json.dumps({"winner": {"name": "merged-1.0"}}))
    (tmp_path / "cp.csv").write_text("step,loss,eval_loss\n1,3.0,\n2,2.5,2.7\n")
    (tmp_path / "empty.csv").write_text("step,loss,eval_loss,learning_rate\n")  # nothing trained: still a figure
    written = draw_plots(files, tmp_path / "board.json", {"cp_loss": {"cp": tmp_path / "cp.csv"},
                                                          "upstream_loss": {"pretrain": tmp_path / "empty.csv"}},
                         tmp_path / "plots")
    assert sorted(p.name for p in written) == ["candidates.png", "cp_loss.png", "ratio_sweep.png", "upstream_loss.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in written)  # no temp file


def test_a_rate_that_is_zero_for_every_model_is_named_in_a_note_not_the_legend() -> None:
    scores = {name: metrics | {"refusal_rate": 0.0, "false_refusal_rate": 0.0} for name, metrics in SCORES.items()}
    axis = candidates_figure(scores, "merged-1.0").axes[0]
    legend = [text.get_text() for text in axis.get_legend().get_texts()]
    assert legend == ["answer_accuracy", "termination_rate"]  # each with bars to see
    (note,) = [text.get_text() for text in axis.texts]
    assert "0 for every model" in note and "refusal_rate" in note and "false_refusal_rate" in note


def test_the_held_out_loss_is_labelled_as_text_never_trained_on(tmp_path: Path) -> None:
    (tmp_path / "cp.csv").write_text("step,loss,eval_loss\n1,3.0,\n2,2.5,2.7\n3,2.0,\n4,1.5,2.9\n")
    figure = loss_figure({"cp": tmp_path / "cp.csv"}, "cp loss")
    labels = [line.get_label() for line in figure.axes[0].lines]
    assert labels == ["cp train loss", "cp held-out loss (never trained on)"]
    (note,) = [text.get_text() for text in figure.texts]
    assert "never trained on" in note and "can rise while the training loss falls" in note.replace("\n", " ")
    (tmp_path / "trained.csv").write_text("step,loss,eval_loss\n1,3.0,\n2,2.5,\n")
    assert not loss_figure({"chat": tmp_path / "trained.csv"}, "upstream loss").texts  # no held-out curve, no note
