"""The plots stage's figures: the ratio sweep's points are the candidates' scores, every image is a PNG."""
from __future__ import annotations

import json
from pathlib import Path

from pipelines.plots import draw_plots, ratio_sweep_figure

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
