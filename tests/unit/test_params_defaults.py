"""One source of truth for defaults: every value params.yaml writes is the config model's default, so
`chatgraft merge` without --config, a test's params and the stages agree; only the recipe's seeds and the
promotion policy's guardrails are the project's choices on top."""
from __future__ import annotations

from typing import Any

import yaml

from pipelines.config import Params, with_world_defaults
from tests.conftest import REPO

CHOSEN = {"upstream.pretrain.seed", "upstream.chat_tune.seed", "cp.seed", "align.train.seed",
          "promote.guardrails", "promote.champion_guardrails"}


def differences(written: dict[str, Any], default: dict[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key, value in written.items():
        name = f"{prefix}{key}"
        if name in CHOSEN:
            continue
        if isinstance(value, dict) and isinstance(default.get(key), dict):
            found += differences(value, default[key], f"{name}.")
        elif default.get(key) != value:
            found.append(f"{name}: params.yaml {value!r}, model {default.get(key)!r}")
    return found


def test_params_yaml_writes_the_models_defaults() -> None:
    written = with_world_defaults(yaml.safe_load((REPO / "params.yaml").read_text()))  # `auto`: the world's value
    assert differences(written, Params().model_dump()) == []
