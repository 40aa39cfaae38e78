"""The deployment files agree: every environment variable prefect.yaml's steps read is set by the Kubernetes job
template, pointing where the template mounts the project."""
from __future__ import annotations

import json
import re

import yaml

from tests.conftest import REPO


def test_the_kubernetes_job_sets_what_prefect_yamls_pull_step_reads() -> None:
    steps = json.dumps(yaml.safe_load((REPO / "prefect.yaml").read_text())["pull"])
    read = set(re.findall(r"\{\{\s*\$(\w+)\s*\}\}", steps))
    template = json.loads((REPO / "infra" / "k8s" / "base-job-template.json").read_text())
    env = template["variables"]["properties"]["env"]["default"]
    assert read and read <= set(env)
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    project = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "project")
    assert env["CHATGRAFT_PROJECT_DIR"] == project == container["workingDir"]
