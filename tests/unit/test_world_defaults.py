"""A world's settings come with the world: `auto` (or no value) in a key the world sets takes that world's best
measured value, and a value the user writes wins."""
from __future__ import annotations

from pathlib import Path

import yaml

from pipelines.config import AUTO, WORLD_DEFAULTS, validate_params, with_world_defaults

REPO = Path(__file__).resolve().parents[2]


def shipped(**data) -> dict:
    """The repository's params.yaml, its data section updated."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"] |= data
    return raw


def effective(params) -> dict:
    return {"data.base_target_share": params.data.base_target_share, "data.base_target_mix": params.data.base_target_mix,
            "data.chat_target_share": params.data.chat_target_share, "cp.new_tokens": params.cp.new_tokens,
            "merge.embedding_rows": params.merge.embedding_rows}


def test_the_shipped_params_leave_every_world_key_to_the_world() -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert {dotted: raw[dotted.split(".")[0]][dotted.split(".")[1]] for dotted in WORLD_DEFAULTS["language"]} == \
        dict.fromkeys(WORLD_DEFAULTS["language"], AUTO)


def test_the_language_world_alone_gives_its_measured_settings() -> None:
    assert effective(validate_params(shipped(world="language"))) == {
        "data.base_target_share": 0.3, "data.base_target_mix": 0.5, "data.chat_target_share": 0.3, "cp.new_tokens": 200,
        "merge.embedding_rows": "overlap"}


def test_the_domain_world_keeps_the_settings_it_always_had() -> None:
    assert effective(validate_params(shipped())) == {
        "data.base_target_share": 0.0, "data.base_target_mix": 1.0, "data.chat_target_share": 0.0, "cp.new_tokens": 0,
        "merge.embedding_rows": "specials"}


def test_what_the_user_writes_wins_and_a_left_out_key_is_the_worlds() -> None:
    raw = shipped(world="language", base_target_mix=0.8)
    raw["cp"]["new_tokens"] = 50
    del raw["merge"]["embedding_rows"]
    params = validate_params(raw)
    assert (params.data.base_target_mix, params.cp.new_tokens, params.merge.embedding_rows) == (0.8, 50, "overlap")
    assert params.data.base_target_share == 0.3


def test_the_values_logged_are_the_values_that_take_effect() -> None:
    raw = shipped(world="language")
    resolved = with_world_defaults(raw)
    assert resolved["cp"]["new_tokens"] == 200 and resolved["merge"]["embedding_rows"] == "overlap"
    assert raw["cp"]["new_tokens"] == AUTO  # the mapping given is left as it was
    assert {k: v for k, v in resolved["cp"].items() if k != "new_tokens"} == \
        {k: v for k, v in raw["cp"].items() if k != "new_tokens"}
