"""A project moved with `mv` keeps its registry: a person's command opens the store at the new place, and the
champion, logged as the flow logs it (transformers flavor from a checkpoint folder of the project), loads and answers
from there, as the README's snippet loads it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking._model_registry import utils as registry_utils
from mlflow.tracking._tracking_service import utils as tracking_utils

from flows.tracking import history, open_store, registry
from flows.tracking.store import embedded_uri
from tests.unit.merge_models import make_trio

pytestmark = pytest.mark.integration
MODEL = "chatgraft-chat"  # the default params' registered model
REQUEST = {"messages": [{"role": "user", "content": "what is the city of kato ?"}], "max_tokens": 3}


def _chatgraft(*args: str) -> str:
    """A person's command, in a process of its own, on the embedded store."""
    env = {name: value for name, value in os.environ.items()
           if name not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    done = subprocess.run([str(Path(sys.executable).parent / "chatgraft"), *args], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _as_a_new_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget the tracking and registry URIs open_store set process-wide (and exported to the environment), as a new
    process would not have them; monkeypatch puts the originals back after the test."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)


def test_the_champion_of_a_moved_project_loads_and_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _as_a_new_process(monkeypatch)
    old = tmp_path / "project"
    (old / "mlflow").mkdir(parents=True)
    (old / "params.yaml").write_text(yaml.safe_dump({}))
    store = open_store(old, "chatgraft")
    checkpoint = make_trio(old / "models")["chat"]
    version = registry.register_model(store, store.client.create_run(store.experiment_id).info.run_id, MODEL,
                                      checkpoint, {}, REQUEST)
    store.client.set_registered_model_alias(MODEL, registry.CHAMPION, version)
    history.record(store, MODEL, version, "kept", ["test"], "test", version, version)  # no move: no Prefect event
    moved = Path(shutil.move(old, tmp_path / "moved"))

    assert "kept" in _chatgraft("history", "--project-dir", str(moved))
    _as_a_new_process(monkeypatch)
    mlflow.set_tracking_uri(embedded_uri(moved))  # as README's "Load the champion anywhere"
    chat = mlflow.transformers.load_model(f"models:/{MODEL}@champion")
    assert chat.tokenizer.chat_template
    served = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    (completion,) = served.predict(REQUEST)
    assert completion["choices"][0]["message"]["role"] == "assistant"
    assert completion["model"] == str(moved / checkpoint.relative_to(old))  # the folder it came from, where it is now
    (stopped,) = served.predict({**REQUEST, "stop": ["city"]})  # MLflow reads the source folder's tokenizer
    assert stopped["choices"][0]["message"]["role"] == "assistant"
    assert not old.exists()
