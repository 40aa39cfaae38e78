"""`check-champion`: the flow Prefect starts when `champion` moves (prefect.yaml's deployment of it is triggered by
the event `chatgraft.champion.moved`, whoever moved it: the flow, a person, the MLflow UI). It loads the new champion
as `mlflow models serve` does and asks it the question logged with it, so a move to a model that cannot load or
answer fails a run people are alerted to."""
from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.tracking import open_store
from pipelines.config import load_params


@flow(name="check-champion", log_prints=True)
def check_champion(project_dir: str = ".", version: str = "") -> str:
    """Load `version` of the project's registered model (empty: the version `champion` points at; "none": the alias
    was removed, nothing to check) as a pyfunc chat model, ask it its logged input example, and return the answer."""
    root = Path(project_dir).resolve()
    policy = load_params(root / "params.yaml").promote
    if version == "none":
        print(f"{policy.registered_model}: champion was removed; nothing to check")
        return ""
    open_store(root, policy.experiment)
    uri = f"models:/{policy.registered_model}/{version}" if version else f"models:/{policy.registered_model}@champion"
    model = mlflow.pyfunc.load_model(uri)
    if model.input_example is None:
        raise ValueError(f"{uri}: no input example was logged with the model; nothing to ask it")
    (completion,) = model.predict(model.input_example)
    answer = completion["choices"][0]["message"]["content"]
    question = model.input_example["messages"][-1]["content"]
    create_markdown_artifact(key="champion-check", description=f"{uri} answers its stored question",
                             markdown=f"**{uri}**\n\n| question | answer |\n| --- | --- |\n| {question} | {answer} |")
    print(f"{uri}: {question!r} -> {answer!r}")
    return answer
