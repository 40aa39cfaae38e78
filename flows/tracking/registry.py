"""The MLflow Model Registry side: register a winner once per content hash, read and move aliases, audit tags."""
from __future__ import annotations

import shutil
import tempfile
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import mlflow
from huggingface_hub import ModelCard
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

from flows.tracking import history, version_pages
from flows.tracking.store import Store
from pipelines.promotion import Champion

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_MD5_TAG = "dvc_model_md5"
PINNED_TAG = "pinned"  # `true` (set in the UI or by `chatgraft pin`): only a person moves `champion` away
EVAL_FINGERPRINT_TAG = "eval_fingerprint"  # what the version's metrics were measured on
EVAL_RUN_TAG = "eval_run_id"  # the run holding those metrics, when not the one that registered the version
INCOMPLETE_TAG = "incomplete"  # `true`: a killed run left the version without its lineage; never a candidate
MODEL_DESCRIPTION = (f"Chat models made by chatgraft (continual pretraining + chat vector). Every decision about "
                     f"`champion`, by the flow, by a person, or in this UI (heard by `chatgraft watch`, which "
                     f"`chatgraft ui` starts), is a run of the MLflow experiment "
                     f"`{history.HISTORY_EXPERIMENT}`; `chatgraft history` prints them.")


def _requirements() -> list[str]:
    return [f"{package}=={version(package)}" for package in ("torch", "transformers", "accelerate", "safetensors")]


def find_version(store: Store, model: str, model_md5: str) -> str | None:
    """The version already registered from these exact weights, if any."""
    for candidate in store.client.search_model_versions(f"name = '{model}'"):
        if candidate.tags.get(MODEL_MD5_TAG) == model_md5:
            return str(candidate.version)
    return None


def _model_card(checkpoint: Path) -> ModelCard | None:
    """The folder's own model card (every stage writes one): logged with the model, so MLflow does not look for
    one on the hub, which is unreachable here and knows no local path."""
    card = checkpoint / "README.md"
    return ModelCard.load(card) if card.is_file() else None


def register_model(store: Store, run_id: str, model: str, checkpoint: Path, tags: dict[str, str],
                   input_example: dict) -> str:
    """Log the checkpoint with the transformers flavor under `run_id`, `input_example` (a chat request) beside it,
    and register it with its tags in one call (a kill leaves either no version or a version with its lineage);
    returns the version. Logged from its folder: the model is not loaded."""
    events_shown = MLFLOW_LOGGING_STREAM.enabled  # log_model turns MLflow's event lines on when it ends: keep
    with mlflow.start_run(run_id=run_id):       # the caller's choice (`chatgraft run` silences them)
        info = mlflow.transformers.log_model(
            # llm/v1/chat: a text-generation pipeline for load_model, chat messages in and out (through the
            # model's chat template) for pyfunc and `mlflow models serve`
            transformers_model=str(checkpoint), name="model", task="llm/v1/chat", pip_requirements=_requirements(),
            input_example=input_example, model_card=_model_card(checkpoint),
        )
    MLFLOW_LOGGING_STREAM.enabled = events_shown
    registered = str(mlflow.register_model(info.model_uri, model, tags=tags).version)
    if not store.client.get_registered_model(model).description:  # never over what a person wrote
        store.client.update_registered_model(model, description=MODEL_DESCRIPTION)
    return registered


def describe_version(store: Store, model: str, version: str, description: str) -> None:
    """Set a version's description (markdown in the registry page), then write its status part (version_pages:
    at the markers `description` holds, else at its end)."""
    store.client.update_model_version(model, version, description=description)
    rewrite_pages(store, model, {version})


def rewrite_pages(store: Store, model: str, only: set[str] | None = None) -> list[str]:
    """Write again the status part of the pages of versions `only` (every version when None) from the registry as
    it is now, where it changed (a person's text around it kept); returns the versions rewritten. Cheap enough for
    the promotion lock: a query each for the versions, the aliases, the history and the metrics, then one write per
    page that changed."""
    held = {str(v.version): v for v in store.client.search_model_versions(f"name = '{model}'")}
    marks, entries = aliases(store, model), history.read(store, model)
    chosen = sorted(held.keys() if only is None else only & held.keys(), key=int)
    top = held.get(marks.get(CHAMPION, ""))
    metrics = _metrics_of(store, {_metrics_run(v) for v in [*(held[n] for n in chosen), *([top] if top else [])]})
    champion = Champion(str(top.version), metrics[_metrics_run(top)], _pinned(top.tags)) if top else None
    rewritten = []
    for number in chosen:
        tags = held[number].tags
        page = version_pages.Standing(
            model=model, version=number, metrics=metrics[_metrics_run(held[number])], champion=champion,
            challenger=marks.get(CHALLENGER) == number, incomplete=tags.get(INCOMPLETE_TAG) == "true",
            decision=_latest_decision(tags), rollback_to=tags.get("promotion.rollback_to"), history=entries)
        before = held[number].description or ""
        after = version_pages.with_status(before, version_pages.status_markdown(page))
        if after != before:
            store.client.update_model_version(model, number, description=after)
            rewritten.append(number)
    return rewritten


def _latest_decision(tags: dict[str, str]) -> str:
    """The decision `record_decision` left on a version, in words ("" when none)."""
    if "promotion.decision" not in tags:
        return ""
    return (f"{tags['promotion.decision']} ({tags.get('promotion.reasons', '')}), {tags.get('promotion.at', '')}, "
            f"by {tags.get('promotion.actor', '')}")


def _metrics_run(held: ModelVersion) -> str | None:
    """The run holding a version's latest metrics: its re-evaluation's, else the one that registered it."""
    return held.tags.get(EVAL_RUN_TAG) or held.run_id or None


def _metrics_of(store: Store, run_ids: set[str | None]) -> dict[str | None, dict[str, float]]:
    """The metrics of each run: those in the project's experiment in one query, any other one by one; none for a
    run that is gone, or for a version registered without one (None)."""
    wanted = sorted(run_id for run_id in run_ids if run_id)
    found: dict[str | None, dict[str, float]] = {None: {}}
    if wanted:
        found |= {run.info.run_id: run.data.metrics for run in store.client.search_runs(
            [store.experiment_id], "attributes.run_id IN ({})".format(", ".join(f"'{r}'" for r in wanted)),
            max_results=len(wanted))}
    for run_id in set(wanted) - found.keys():
        try:
            found[run_id] = store.client.get_run(run_id).data.metrics
        except MlflowException:
            found[run_id] = {}
    return found


def repair_versions(store: Store, model: str) -> list[str]:
    """Versions without their content hash (registered by a run killed before it tagged them, before registration
    took its tags in one call) get their tags from the run that registered them, which carries the same ones;
    a version whose run has none is tagged incomplete, so nothing reads it as a candidate. Returns the versions
    repaired or marked."""
    repaired = []
    for held in store.client.search_model_versions(f"name = '{model}'"):
        if MODEL_MD5_TAG in held.tags or held.tags.get(INCOMPLETE_TAG) == "true":
            continue
        run_tags = store.client.get_run(held.run_id).data.tags if held.run_id else {}
        lineage = {k: v for k, v in run_tags.items() if not k.startswith("mlflow.")}
        set_version_tags(store, model, str(held.version),
                         lineage if MODEL_MD5_TAG in lineage else {INCOMPLETE_TAG: "true"})
        repaired.append(str(held.version))
    return repaired


def complete_champion_audit(store: Store, model: str, actor: str) -> str | None:
    """When `champion` is not where the promotion history last put it (a move killed between the alias and its
    record, or one made in the UI with no `chatgraft watch` listening), record the move now (call under the
    promotion lock); returns the version that holds it."""
    version, recorded = alias_holder(store, model, CHAMPION), history.recorded_champion(store, model)
    if (version or "none") == recorded:
        return None
    reasons = ["champion moved without a recorded decision (a move killed between the alias and its record, or one "
               "made in the MLflow UI while no `chatgraft watch` listened)"]
    if version is None:
        record_decision(store, model, recorded, history.UI_REMOVAL, reasons, actor, recorded, to_version="none")
    else:
        record_decision(store, model, version, "promoted", reasons, actor, None if recorded == "none" else recorded)
    return version


def versions(store: Store, model: str) -> list[ModelVersion]:
    """Every version of `model`, newest first, with its tags."""
    held = store.client.search_model_versions(f"name = '{model}'")
    return sorted(held, key=lambda v: int(v.version), reverse=True)


def aliases(store: Store, model: str) -> dict[str, str]:
    """Each alias of `model` and the version it points at."""
    return {alias: str(version) for alias, version in store.client.get_registered_model(model).aliases.items()}


def registering_run(store: Store, model: str, version: str) -> str | None:
    """The MLflow run that logged and registered `version`."""
    return store.client.get_model_version(model, version).run_id


def version_tags(store: Store, model: str, version: str) -> dict[str, str]:
    """The tags of one model version."""
    return dict(store.client.get_model_version(model, version).tags)


def alias_holder(store: Store, model: str, alias: str) -> str | None:
    """The version `alias` points at, or None."""
    try:
        return str(store.client.get_model_version_by_alias(model, alias).version)
    except MlflowException:
        return None


def champion(store: Store, model: str) -> Champion | None:
    """The current champion with its latest metrics and pin, or None when no version holds the alias."""
    version = alias_holder(store, model, CHAMPION)
    if version is None:
        return None
    return version_standing(store, model, version)


def version_standing(store: Store, model: str, version: str) -> Champion:
    """A version's latest metrics and pin, as the policy compares a champion."""
    held = store.client.get_model_version(model, version)
    return Champion(version, store.client.get_run(_metrics_run(held)).data.metrics, _pinned(held.tags))


def _pinned(tags: dict[str, str]) -> bool:
    return tags.get(PINNED_TAG, "").lower() == "true"


def remove_alias(store: Store, model: str, alias: str) -> None:
    """Point `alias` at no version."""
    store.client.delete_registered_model_alias(model, alias)


def set_version_tags(store: Store, model: str, version: str, tags: dict[str, str]) -> None:
    """Set tags on one model version; a pin or new metrics rewrite its page, and every page when it is the
    champion's (each compares with the champion's metrics, and says when it is pinned)."""
    for key, value in tags.items():
        store.client.set_model_version_tag(model, version, key, value)
    if tags.keys() & {PINNED_TAG, EVAL_RUN_TAG}:
        rewrite_pages(store, model, None if alias_holder(store, model, CHAMPION) == version else {version})


def download_checkpoint(store: Store, model: str, version: str, out: Path) -> Path:
    """Write a registered version as a Hugging Face checkpoint (weights, tokenizer, chat template) into `out`, a
    new folder: the files it was logged from, downloaded (copied from a local store), never loaded into memory,
    so whoever evaluates or serves it loads it once."""
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as tmp:
        logged = Path(mlflow.artifacts.download_artifacts(f"models:/{model}/{version}", dst_path=tmp))
        checkpoint = logged / Model.load(logged).flavors["transformers"]["model_binary"]
        tokenizer = logged / "components" / "tokenizer"
        if not (checkpoint / "tokenizer_config.json").exists() and tokenizer.is_dir():  # logged from a pipeline
            shutil.copytree(tokenizer, checkpoint, dirs_exist_ok=True)
        checkpoint.rename(out)
    return out


def set_alias(store: Store, model: str, alias: str, version: str) -> None:
    """Point `alias` at `version`; a move of `challenger` rewrites the pages of the version it leaves and the one it
    takes (a move of `champion` is always followed by `record_decision`, which rewrites the pages)."""
    left = alias_holder(store, model, alias) if alias == CHALLENGER else None
    store.client.set_registered_model_alias(model, alias, version)
    if alias == CHALLENGER:
        rewrite_pages(store, model, {version, left} - {None})


def record_decision(store: Store, model: str, version: str, decision: str, reasons: list[str], actor: str,
                    previous: str | None, rollback_to: str | None = None, to_version: str | None = None) -> None:
    """Audit trail on the version (its latest decision): the decision, why, who or what made it, the previous
    champion, when, and the version `chatgraft rollback` returns to while this one is champion; and the same
    decision added to the promotion history, which keeps every one. Champion afterwards is `to_version` when
    given, else `version` for a move (history.MOVES), else still `previous`. Then the pages the decision changed
    are rewritten: every version's when champion moved (each is compared with the champion), else `version`'s."""
    tags = {
        "promotion.decision": decision,
        "promotion.reasons": "; ".join(reasons),
        "promotion.actor": actor,
        "promotion.previous_champion": previous or "none",
        "promotion.at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if rollback_to is not None:
        tags["promotion.rollback_to"] = rollback_to
    set_version_tags(store, model, version, tags)
    before = previous or "none"
    after = to_version or (version if decision in history.MOVES else before)
    history.record(store, model, version, decision, reasons, actor, before, after)
    rewrite_pages(store, model, None if after != before else {version})
