"""The environment is part of the lineage: every run's tags name the package set and the kind of machine, the run
holds the package list, and `chatgraft status` says when the champion was scored on another kind of machine,
comparing with this machine's tags as the last probe here saw them (probing torch again only when what they depend on
changed)."""
from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows import environment_lineage
from flows.environment_lineage import (MACHINE_TAGS, PACKAGES_ARTIFACT, cpu_tags, cpuinfo, environment_tags,
                                       installed_packages, machine_notice, machine_tags, packages_sha256)
from flows.lineage import lineage_tags, log_environment
from flows.registry_view import registry_overview
from flows.tracking import registry
from flows.tracking.stage_runs import tracked_run
from flows.tracking.store import Store

ENV_KEYS = {"env.packages_sha256", "env.cpu", "env.cpu_flags", "env.cpu_capability", "env.threads", "env.accelerator"}
# Another kind of machine, written by hand as a version registered there would carry it.
AMD = {"env.cpu": "AuthenticAMD AMD EPYC 7763 64-Core Processor", "env.cpu_flags": "avx avx2 fma f16c",
       "env.cpu_capability": "AVX2", "env.accelerator": "none"}
NOTICE = "measured on another kind of machine"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A sqlite store for the module (creating one takes seconds), one experiment; each test its own model."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    return Store(uri, client, client.create_experiment("runs", (folder / "artifacts").as_uri()))


def _champion(store: Store, model: str, tags: dict[str, str]) -> str:
    """`model` registered with one version carrying `tags` and holding `champion`; `chatgraft status`'s text."""
    with tracked_run(store, "register", {}) as run_id:
        pass
    store.client.create_registered_model(model)
    held = store.client.create_model_version(model, f"runs:/{run_id}/model", run_id, tags=tags)
    store.client.set_registered_model_alias(model, registry.CHAMPION, held.version)
    return registry_overview(store, model, "answer_accuracy")


def test_every_lineage_carries_the_environment_and_it_is_stable_in_a_process(tmp_path: Path) -> None:
    first, second = lineage_tags(tmp_path), lineage_tags(tmp_path, {"data/corpus": "abc"})
    assert ENV_KEYS <= first.keys()
    assert {key: first[key] for key in ENV_KEYS} == {key: second[key] for key in ENV_KEYS}
    assert "unknown" not in {first["env.cpu_capability"], first["env.threads"], first["env.accelerator"]}
    assert environment_tags() is environment_tags()  # computed once: the probe does not run again
    assert first["env.packages_sha256"] == packages_sha256(installed_packages())


def test_the_package_hash_follows_the_package_list() -> None:
    packages = ["python==3.11.9", "torch==2.13.0", "transformers==5.22.2"]
    assert packages_sha256(packages) == packages_sha256(list(reversed(packages)))
    assert packages_sha256(packages) != packages_sha256([*packages[:2], "transformers==5.22.3"])
    assert packages_sha256(packages) != packages_sha256(packages[:2])
    assert any(package.startswith("torch==") for package in installed_packages())


def test_cpu_tags_name_the_kind_and_the_dispatch_flags_it_has() -> None:
    info = cpuinfo("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7763 64-Core Processor\n"
                   "flags\t\t: fpu sse avx avx2 fma f16c sha_ni\n\nprocessor\t: 1\nvendor_id\t: other\n")
    assert cpu_tags(info) == {"env.cpu": AMD["env.cpu"], "env.cpu_flags": "avx avx2 fma f16c"}


def test_the_package_list_is_an_artifact_of_the_run(store: Store, tmp_path: Path) -> None:
    with tracked_run(store, "retrain", {}) as run_id:
        log_environment(store, run_id)
    logged = Path(store.client.download_artifacts(run_id, PACKAGES_ARTIFACT, str(tmp_path))).read_text()
    assert logged.splitlines() == list(installed_packages())
    assert packages_sha256(logged.splitlines()) == environment_tags()["env.packages_sha256"]


def test_the_notice_names_each_machine_tag_that_differs_and_only_those() -> None:
    here = {**AMD, "env.cpu_capability": "AVX512", "env.threads": "2"}
    notice = machine_notice({**AMD, "env.threads": "64"}, here)
    assert notice is not None and NOTICE in notice
    assert "torch CPU capability: AVX2 there, AVX512 here" in notice
    assert "CPU:" not in notice and "CPU flags:" not in notice and "threads" not in notice
    assert machine_notice(AMD, AMD) is None
    assert machine_notice({"git_sha": "abc"}, here) is None


def test_status_says_when_the_champion_was_scored_on_another_kind_of_machine(store: Store) -> None:
    shown = _champion(store, "scored-on-amd", {**environment_tags(), **AMD})
    assert NOTICE in shown and f"CPU: {AMD['env.cpu']} there, {environment_tags()['env.cpu']} here" in shown


def test_status_is_quiet_when_the_champion_was_scored_on_this_kind_of_machine(store: Store) -> None:
    shown = _champion(store, "scored-here", environment_tags())
    assert NOTICE not in shown and "torch CPU capability" in shown  # the lineage table shows what was recorded


def test_status_is_quiet_for_a_champion_recorded_before_environment_tags(store: Store) -> None:
    assert NOTICE not in _champion(store, "scored-before-env-tags", {"git_sha": "abc"})


def test_status_compares_with_this_machine_without_probing_torch_again(store: Store, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    recorded_here = environment_tags()  # as a version registered on this machine carries them
    here = {key: value for key, value in recorded_here.items() if key in MACHINE_TAGS}
    assert machine_tags() == here  # nothing kept in this cache yet: probed once, and kept

    def probe() -> dict[str, str]:
        raise AssertionError("torch probed again")
    environment_tags.cache_clear()  # a fresh process, as `chatgraft status` is
    monkeypatch.setattr(environment_lineage, "_probe_torch", probe)
    assert machine_tags() == here
    there = "AVX512" if here["env.cpu_capability"] != "AVX512" else "AVX2"  # a kind other than this machine's
    shown = _champion(store, "scored-on-amd-seen-from-here", {**recorded_here, **AMD, "env.cpu_capability": there})
    assert NOTICE in shown and f"torch CPU capability: {there} there, {here['env.cpu_capability']} here" in shown
    assert NOTICE not in _champion(store, "scored-here-seen-from-here", recorded_here)


def test_a_new_cap_on_torch_s_capability_is_probed_again(store: Store, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    recorded = environment_tags()  # a version registered here before the cap
    full = machine_tags()["env.cpu_capability"]
    assert full == recorded["env.cpu_capability"] != "DEFAULT"  # this machine has vector units torch uses
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")  # torch then picks its plain kernels: what was kept is wrong
    assert machine_tags()["env.cpu_capability"] == "DEFAULT"
    shown = _champion(store, "scored-before-the-cap", recorded)
    assert NOTICE in shown and f"torch CPU capability: {full} there, DEFAULT here" in shown
