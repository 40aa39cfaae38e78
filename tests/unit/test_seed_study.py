"""The seed study (`make seeds`): every seed of the recipe moves together, and the table is mean (min-max)."""
from __future__ import annotations

import yaml

from benchmarks.seeds import REPOSITORY, seed_keys, table


def test_every_seed_of_params_yaml_is_found_by_its_dotted_key() -> None:
    keys = seed_keys(yaml.safe_load((REPOSITORY / "params.yaml").read_text()))
    text = (REPOSITORY / "params.yaml").read_text()
    assert len(keys) == text.count("seed:")  # each `seed:` the file writes, nested flow maps included
    assert {"data.seed", "upstream.pretrain.seed", "cp.seed", "align.train.seed"} <= set(keys)
    assert all(isinstance(value, int) for value in keys.values())


def test_the_table_gives_each_models_mean_and_range_over_the_seeds() -> None:
    def board(accuracy: float) -> dict:
        return {"candidates": {"merged-1.0": {"answer_accuracy": accuracy, "termination_rate": 1.0,
                                              "language_consistency": 0.5}}}

    lines = table({0: board(0.2), 1: board(0.5), 2: board(0.8)}).splitlines()
    assert lines[0].startswith("| model (3 seeds) | answer acc.")
    assert lines[2] == "| merged-1.0 | 0.500 (0.200-0.800) | 1.000 (1.000-1.000) | 0.500 (0.500-0.500) |"
