"""A registered version's page (its description in the registry) kept true: the part chatgraft writes about the
version's standing (its status, the champion it is compared with, how to promote it) lies between two HTML
comments, which the MLflow UI's markdown hides, and is rewritten after each decision that changes it (see
`registry.record_decision`); what a person wrote around it is kept."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flows.tracking.history import HistoryEntry
from pipelines.promotion import Champion

START = "<!-- chatgraft:status (rewritten after each decision about champion: write your notes outside it) -->"
END = "<!-- /chatgraft:status -->"
EMPTY = f"{START}\n{END}"  # where a new description wants its status part
# metrics a person looks for first (the default primary metric, then the guardrails' usual ones); the rest sorted
FIRST = ("answer_accuracy", "termination_rate", "repetition_rate", "target_perplexity")


@dataclass(frozen=True)
class Standing:
    """What a version's page says of it: read from the registry (aliases, the version's tags, the promotion
    history) at the moment of writing."""

    model: str
    version: str
    metrics: dict[str, float]
    champion: Champion | None  # the current one, with its latest metrics and pin
    challenger: bool
    incomplete: bool
    decision: str  # the latest decision recorded on the version ("" when none): what, why, when
    rollback_to: str | None  # where `chatgraft rollback` returns champion while this version holds it
    history: list[HistoryEntry]

    @property
    def is_champion(self) -> bool:
        """Whether this version holds `champion`."""
        return self.champion is not None and self.champion.version == self.version


def metric_order(names: Iterable[str], primary: str = FIRST[0]) -> list[str]:
    """`names` with the primary metric and the guardrails' usual ones first, the rest sorted."""
    present = set(names)
    first = list(dict.fromkeys(name for name in (primary, *FIRST) if name in present))
    return first + sorted(present - set(first))


def with_status(description: str, status: str) -> str:
    """`description` with `status` between the markers: replacing what they held, or added at the end of a
    description that has none (one a person wrote, or one written before pages were kept true)."""
    start, end = description.find(START), description.find(END)
    block = f"{START}\n{status}\n{END}"
    if start == -1 or end < start:
        return f"{description.rstrip()}\n\n{block}" if description.strip() else block
    return description[:start] + block + description[end + len(END):]


def status_markdown(held: Standing) -> str:
    """The generated part of a version's page: its status, then its metrics beside the current champion's, then
    how to make it champion (or, on the champion's page, its pin and where a rollback returns)."""
    if held.is_champion:
        return "\n".join([*_champion_lines(held), "", *_table(held)])
    promote = [] if held.incomplete else ["", _how_to_promote(held)]
    return "\n".join([*_other_lines(held), "", *_table(held), *promote])


def _champion_lines(held: Standing) -> list[str]:
    arrival = next((e for e in reversed(held.history) if e.to_version == held.version != e.from_version), None)
    line = "**Status: champion**"
    if arrival is not None:
        line += f" since {arrival.at}: {arrival.decision} by {arrival.actor} ({arrival.reasons})"
    lines = [line + "."]
    if held.champion.pinned:
        lines += ["", f"Pinned: the flow's policy never replaces it, and a move in the MLflow UI away from it is "
                      f"undone; `chatgraft pin {held.version} --off` unpins it."]
    if held.rollback_to not in (None, "none"):
        lines += ["", f"`chatgraft rollback` gives champion back to version {held.rollback_to}."]
    return lines


def _other_lines(held: Standing) -> list[str]:
    departure = next((e for e in reversed(held.history) if e.from_version == held.version != e.to_version), None)
    if held.incomplete:
        status = ("incomplete**: registered by a run killed before its lineage was recorded; it cannot be "
                  "promoted (register the model again)")
    elif held.challenger:
        status = "challenger**: the winner of the latest run, not champion"
    elif departure is not None:
        status = "was champion**"
    else:
        status = "not champion**"
    lines = [f"**Status: {status}."]
    if departure is not None:
        lines += ["", f"Was champion until {departure.at}, when champion went to "
                      f"{_version(departure.to_version)} ({departure.decision} by {departure.actor})."]
    if held.decision:
        lines += ["", f"Latest decision about it: {held.decision}."]
    return lines


def _how_to_promote(held: Standing) -> str:
    line = (f"To make it champion: `chatgraft promote {held.version} --reason \"...\"`, or in the MLflow UI: Models > "
            f"{held.model} > Version {held.version} > Aliases > add `champion` (in the UI `chatgraft ui` opens, the "
            "move is recorded, and undone when the version breaks a guardrail).")
    if held.champion is not None and held.champion.pinned:
        line += (f" The champion, version {held.champion.version}, is pinned: the flow's policy does not replace it "
                 f"and a move in the UI is undone until `chatgraft pin {held.champion.version} --off`.")
    return line


def _table(held: Standing) -> list[str]:
    """The version's latest metrics, beside the current champion's on any page but the champion's own."""
    if held.is_champion:
        return ["| metric | this version |", "|---|---|",
                *(f"| {name} | {_cell(held.metrics[name])} |" for name in metric_order(held.metrics))]
    champion = held.champion
    theirs = champion.metrics if champion else {}
    column = f"champion (version {champion.version})" if champion else "champion (none)"
    return [f"| metric | {column} | this version |", "|---|---|---|",
            *(f"| {name} | {_cell(theirs.get(name))} | {_cell(held.metrics.get(name))} |"
              for name in metric_order([*held.metrics, *theirs]))]


def _version(version: str) -> str:
    return "no version (the alias was removed)" if version == "none" else f"version {version}"


def _cell(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "-"
