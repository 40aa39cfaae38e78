"""Model cards name their sources' hub repo ids where a source's own card or params.yaml gives one, and keep the path
and fingerprint in any case."""
from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from pipelines.config import MergeSettings, ParamsError, validate_params
from pipelines.merge.chat_vector import merge_chat_vector
from pipelines.model_card import write_model_card
from tests.unit.merge_models import make_trio

BASE_ID, CHAT_ID = "HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M-Instruct"


def _folder(root: Path, name: str, card: str | None = None) -> Path:
    """A model folder with a config and, when given, its own README.md card."""
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text(f'{{"model_type": "llama", "name": "{name}"}}')
    if card is not None:
        (folder / "README.md").write_text(card)
    return folder


def _card(tmp_path: Path, sources: dict[str, Path], hub_ids: dict[str, str | None] | None = None) -> ModelCard:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    write_model_card(out, title="t", made_by="m", sources=sources, tags=[], facts={}, hub_ids=hub_ids)
    return ModelCard.load(out / "README.md")


def _row(card: ModelCard, role: str) -> str:
    (row,) = [line for line in card.text.splitlines() if line.startswith(f"| {role} |")]
    return row


def test_a_source_whose_card_names_its_base_model_is_named_by_it(tmp_path: Path) -> None:
    chat = _folder(tmp_path, "chat", f"---\nbase_model: {BASE_ID}\nlicense: apache-2.0\n---\n# SmolLM2 Instruct\n")
    card = _card(tmp_path, {"chat": chat})
    assert card.data.base_model == [BASE_ID]
    row = _row(card, "chat")
    assert f"`{chat}`" in row and f"made from `{BASE_ID}`" in row  # the id and the path, and what the id is


def test_ids_from_params_win_over_a_sources_card_and_fill_in_where_it_has_none(tmp_path: Path) -> None:
    chat = _folder(tmp_path, "chat", f"---\nbase_model: {BASE_ID}\n---\n")
    base = _folder(tmp_path, "base")  # no card at all
    card = _card(tmp_path, {"chat": chat, "base": base}, {"chat": CHAT_ID, "base": BASE_ID})
    assert card.data.base_model == [CHAT_ID, BASE_ID]
    assert f"`{CHAT_ID}`" in _row(card, "chat") and "made from" not in _row(card, "chat")
    assert f"`{BASE_ID}`" in _row(card, "base") and f"`{base}`" in _row(card, "base")


def test_a_source_without_an_id_keeps_its_path_and_fingerprint(tmp_path: Path) -> None:
    # chatgraft's own cards name a source of no known id by its folder: that is not taken for a hub id
    cp = _folder(tmp_path, "cp", "---\nbase_model:\n- base\ntags: [chatgraft]\n---\n")
    card = _card(tmp_path, {"cp": cp}, {"base": BASE_ID})
    assert card.data.base_model == ["cp"]
    row = _row(card, "cp")
    assert f"`{cp}`" in row and "none named" in row and len(row.split("`")[3]) == 16  # path, fingerprint


def test_a_source_inside_the_project_is_named_relative_to_it(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage runs in the project root: a card names the project's own sources from there, so a moved or copied
    project writes the same card (and DVC the same output hash); a source outside keeps its full path."""
    project, outside = tmp_path / "project", _folder(tmp_path, "pair")
    project.mkdir()
    cp = _folder(project, "cp")
    monkeypatch.chdir(project)
    card = _card(project, {"cp": cp, "base": outside})
    assert "| cp | `cp` |" in _row(card, "cp") and str(project) not in card.text
    assert f"`{outside}`" in _row(card, "base")


def test_the_merged_card_names_the_hub_ids_through_cps_card(tmp_path: Path) -> None:
    trio = make_trio(tmp_path)
    write_model_card(trio["cp"], title="cp", made_by="m", sources={"base": trio["base"]}, tags=[], facts={},
                     hub_ids={"base": BASE_ID})  # what the cp stage writes with upstream.base_id
    merge_chat_vector(base=trio["base"], chat=trio["chat"], cp=trio["cp"], out=tmp_path / "merged", ratio=1.0,
                      settings=MergeSettings(), hub_ids={"base": BASE_ID, "chat": CHAT_ID})
    card = ModelCard.load(tmp_path / "merged" / "README.md")
    assert card.data.base_model == [BASE_ID, CHAT_ID]
    assert f"made from `{BASE_ID}`" in _row(card, "cp") and f"`{trio['cp']}`" in _row(card, "cp")


def test_upstream_ids_are_hub_ids_of_a_real_pair() -> None:
    pair = {"base_path": "/m/base", "chat_path": "/m/chat"}
    assert validate_params({"upstream": {**pair, "chat_id": CHAT_ID}}).upstream.hub_ids == {"base": None,
                                                                                          "chat": CHAT_ID}
    with pytest.raises(ParamsError, match="upstream.base_id"):
        validate_params({"upstream": {**pair, "base_id": "models/base/"}})
    with pytest.raises(ParamsError, match="tiny pair"):
        validate_params({"upstream": {"base_id": BASE_ID}})
