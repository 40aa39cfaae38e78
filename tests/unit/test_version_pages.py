"""Version pages that stay true: each decision rewrites the status part of the pages it changes, in a real sqlite
MLflow registry, and keeps what a person wrote around it."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prefect.events.clients import NullEventsClient
from prefect.events.worker import EventsWorker

from flows.leaderboard_view import version_markdown
from flows.tracking import history, open_store, registry
from flows.tracking.store import Store
from flows.tracking.version_pages import END, START, with_status
from pipelines.leaderboard import LeaderboardRow

NOTE = "Alice: good on dates, weak on names."


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A project's embedded store (made once: creating its database takes seconds); the moves' Prefect events go
    nowhere (announcing them is the integration tests' part), so no Prefect API is started."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        EventsWorker.set_client_override(NullEventsClient)
        try:
            yield open_store(tmp_path_factory.mktemp("pages"), "chatgraft")
        finally:
            EventsWorker.set_client_override(None)


@dataclass(frozen=True)
class Model:
    """A registered model of one test's own in the shared store."""

    store: Store
    name: str

    def add_version(self, accuracy: float) -> str:
        run = self.store.client.create_run(self.store.experiment_id)
        self.store.client.log_metric(run.info.run_id, "answer_accuracy", accuracy)
        if not self.store.client.search_registered_models(f"name = '{self.name}'"):
            self.store.client.create_registered_model(self.name)
        return str(self.store.client.create_model_version(self.name, run.info.artifact_uri, run.info.run_id).version)

    def promote(self, version: str, actor: str = "alice") -> None:
        """A move as flows/promotion.py makes one: the alias, then the decision."""
        previous = registry.alias_holder(self.store, self.name, registry.CHAMPION)
        registry.set_alias(self.store, self.name, registry.CHAMPION, version)
        registry.record_decision(self.store, self.name, version, "promoted by hand", ["release"], actor, previous,
                                 previous or "none")

    def page(self, version: str) -> str:
        return self.store.client.get_model_version(self.name, version).description or ""

    def status(self, version: str) -> str:
        """The generated part of a version's page."""
        text = self.page(version)
        assert text.count(START) == text.count(END) == 1, text
        return text[text.index(START):text.index(END)]


@pytest.fixture
def model(store: Store, request: pytest.FixtureRequest) -> Model:
    return Model(store, request.node.name)


def test_the_markers_are_replaced_and_the_text_around_them_kept() -> None:
    written = with_status(f"{NOTE}\n\n{START}\nold status\n{END}\n\nMore notes.", "new status")
    assert written == f"{NOTE}\n\n{START}\nnew status\n{END}\n\nMore notes."
    assert with_status(NOTE, "new status") == f"{NOTE}\n\n{START}\nnew status\n{END}"  # added, not replacing
    assert with_status("", "new status") == f"{START}\nnew status\n{END}"


def test_a_move_rewrites_every_page_it_changes_and_keeps_a_persons_notes(model: Model) -> None:
    first, second, third = model.add_version(0.5), model.add_version(0.6), model.add_version(0.7)
    model.store.client.update_model_version(model.name, first, description=NOTE)  # a person's, before any decision
    model.promote(first)
    assert model.page(first).startswith(NOTE)
    assert "**Status: champion** since" in model.status(first)
    assert "promoted by hand by alice" in model.status(first)
    assert "champion (version 1)" in model.status(third) and "chatgraft promote 3" in model.status(third)

    model.promote(second, actor="bob")
    assert model.page(first).startswith(NOTE)
    assert "**Status: was champion**" in model.status(first)
    assert "when champion went to version 2 (promoted by hand by bob)" in model.status(first)
    assert "chatgraft promote 1" in model.status(first)
    assert "**Status: champion**" in model.status(second) and "chatgraft promote 2" not in model.status(second)
    assert "`chatgraft rollback` gives champion back to version 1" in model.status(second)
    assert "| answer_accuracy | 0.6 | 0.7 |" in model.status(third)  # compared with the new champion

    registry.set_alias(model.store, model.name, registry.CHAMPION, first)  # `chatgraft rollback`'s move
    registry.record_decision(model.store, model.name, first, "rolled back to", ["rolled back from version 2"],
                             "carol", second)
    assert "**Status: champion** since" in model.status(first) and "rolled back to by carol" in model.status(first)
    assert "**Status: was champion**" in model.status(second)
    assert "| answer_accuracy | 0.5 | 0.7 |" in model.status(third)


def test_a_decision_that_moves_nothing_rewrites_only_its_version(model: Model) -> None:
    champion, other, challenger = model.add_version(0.9), model.add_version(0.5), model.add_version(0.6)
    model.promote(champion)
    stale = with_status(model.page(other), "a page nothing rewrote")
    model.store.client.update_model_version(model.name, other, description=stale)

    registry.record_decision(model.store, model.name, challenger, "not promoted", ["0.6 does not beat 0.9"], "flow",
                             champion)
    assert "Latest decision about it: not promoted (0.6 does not beat 0.9)" in model.status(challenger)
    assert model.page(other) == stale  # its status and champion did not change: not written
    assert "**Status: champion**" in model.status(champion)


def test_a_pin_of_the_champion_reaches_every_page_and_challenger_moves_too(model: Model) -> None:
    champion, old, new = model.add_version(0.9), model.add_version(0.5), model.add_version(0.6)
    model.promote(champion)
    registry.set_version_tags(model.store, model.name, champion, {registry.PINNED_TAG: "true"})  # `chatgraft pin`
    assert f"`chatgraft pin {champion} --off` unpins it" in model.status(champion)
    assert f"version {champion}, is pinned" in model.status(old)

    registry.set_alias(model.store, model.name, registry.CHALLENGER, old)
    assert "**Status: challenger**" in model.status(old)
    registry.set_alias(model.store, model.name, registry.CHALLENGER, new)  # the next run's winner
    assert "**Status: challenger**" in model.status(new)
    assert "**Status: not champion**" in model.status(old)


def test_a_registered_version_gets_its_status_under_its_heading(model: Model) -> None:
    champion, new = model.add_version(0.9), model.add_version(0.6)
    model.promote(champion)
    row = LeaderboardRow(name="merged-1.0", rank=1, role="candidate", eligible=True, violations=[],
                         metrics={"answer_accuracy": 0.6})
    registry.describe_version(model.store, model.name, new, version_markdown(new, row, "| the leaderboard |"))
    text = model.page(new)
    assert text.index("## Version 2: merged-1.0") < text.index(START) < text.index("**guardrails at registration")
    assert "| answer_accuracy | 0.9 | 0.6 |" in model.status(new)
    assert len(history.read(model.store, model.name)) == 1
