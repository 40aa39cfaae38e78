"""Inputs checked before any work: `chatgraft evaluate` (and the evaluation itself) refuses before a model is
loaded, naming the file and the option that fixes it; `chatgraft check` compares the CP setup with the machine and
warns about tiny-world defaults left in a real run's params."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from pipelines.config import EvalParams, load_params
from pipelines.evaluate import engines, stage
from pipelines.preflight import (
    TINY_WORLD_DEFAULTS, Machine, cp_setup_problems, setting_value, tiny_world_warnings,
)
from pipelines.training.memory import GIB
from tests.unit.merge_models import make_trio
from tests.unit.test_bad_input import GOOD_EVAL, project

REPO = Path(__file__).resolve().parents[2]
ROOMY_GPU = Machine(gpus=8, gpu_memory=80 * GIB, cpu_cores=64, memory=512 * GIB)
CPU_ONLY = Machine(gpus=0, gpu_memory=0, cpu_cores=2, memory=16 * GIB)


@pytest.fixture
def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model or generating an answer fails the test."""
    def forbidden(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a model was loaded or asked before the inputs were checked")

    monkeypatch.setattr(stage, "load_for_inference", forbidden)
    for engine in engines.IN_PROCESS:
        monkeypatch.setitem(engines.IN_PROCESS, engine, forbidden)
    monkeypatch.setattr(engines, "candidate_endpoint", forbidden)


def machine_is(monkeypatch: pytest.MonkeyPatch, machine: Machine) -> None:
    monkeypatch.setattr("pipelines.preflight.this_machine", lambda: machine)


def check(root: Path) -> tuple[int, str]:
    done = CliRunner().invoke(app, ["check", "--project-dir", str(root)])
    return done.exit_code, done.output


# --- evaluate: every file it reads, read before a model loads ---------------------------------------------------

def test_evaluate_without_a_corpus_is_refused_before_a_model_loads(tmp_path: Path, no_model_loads: None) -> None:
    model = make_trio(tmp_path / "models")["chat"]
    root = tmp_path / "project"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump({"eval": {"max_new_tokens": 4}}))
    (tmp_path / "sets.jsonl").write_text(json.dumps(GOOD_EVAL) + "\n{broken\n")
    done = CliRunner().invoke(app, ["evaluate", "--model", str(model), "--project-dir", str(root),
                                    "--instruction", str(tmp_path / "sets.jsonl"), "--out", str(tmp_path / "out")])
    assert done.exit_code == 2, done.output
    corpus = root / "data" / "corpus"
    for missing in ("valid.jsonl", "target_language.json", "eval_multiturn.jsonl", "eval_safety.jsonl"):
        assert f"{corpus / missing}: no such file" in done.output, done.output
    assert "--corpus DIR" in done.output and "set eval.language_scripts" in done.output
    assert "--multiturn FILE (or eval.sets.multiturn)" in done.output
    assert f"{tmp_path / 'sets.jsonl'}:2: not valid JSON" in done.output
    assert "(the instruction set): --instruction FILE (or eval.sets.instruction)\n" in done.output  # given: no --corpus
    assert not (tmp_path / "out").exists()


def test_sets_named_in_params_are_read_from_the_project(tmp_path: Path, no_model_loads: None) -> None:
    model = make_trio(tmp_path / "models")["chat"]
    root = tmp_path / "project"
    (root / "sets").mkdir(parents=True)
    (root / "sets" / "instruction.jsonl").write_text(json.dumps(GOOD_EVAL) + "\n")
    (root / "params.yaml").write_text(yaml.safe_dump({"eval": {"sets": {"instruction": "sets/instruction.jsonl",
                                                                        "safety": "sets/safety.jsonl"}}}))
    done = CliRunner().invoke(app, ["evaluate", "--model", str(model), "--project-dir", str(root)])
    assert done.exit_code == 2 and f"{root / 'sets' / 'safety.jsonl'}: no such file" in done.output, done.output
    assert "instruction.jsonl" not in done.output  # found where the project names it, whatever the working folder


def test_the_evaluation_itself_refuses_before_loading_a_model(tmp_path: Path, no_model_loads: None) -> None:
    """What the evaluate stage runs (and the champion's re-evaluation) checks the same list first."""
    model = make_trio(tmp_path / "models")["chat"]
    (tmp_path / "corpus").mkdir()
    with pytest.raises(ValueError, match="no model was loaded") as refused:
        stage.evaluate_candidate(model_dir=model, chat_dir=model, corpus_dir=tmp_path / "corpus",
                                 params=EvalParams(language_scripts=["Latin"]), metrics_path=tmp_path / "m.json",
                                 samples_path=tmp_path / "s.jsonl")
    assert f"{tmp_path / 'corpus' / 'valid.jsonl'}: no such file (held-out text for target_perplexity): run the " \
           "corpus stage" in str(refused.value)
    assert "target_language.json" not in str(refused.value)  # eval.language_scripts makes it unneeded


# --- check: the CP setup against the machine --------------------------------------------------------------------

@pytest.mark.parametrize("distributed, machine, expected", [
    ({"strategy": "fsdp", "nproc_per_node": 1}, CPU_ONLY, "cp.distributed.strategy: fsdp needs CUDA GPUs"),
    ({"strategy": "ddp", "nproc_per_node": 4}, CPU_ONLY,
     "cp.distributed.nproc_per_node: 4 processes but this machine has 2 CPU core(s), no GPU: set it to 2 or fewer"),
    ({"strategy": "fsdp", "nproc_per_node": 8}, Machine(gpus=2, gpu_memory=80 * GIB, cpu_cores=64, memory=GIB),
     "cp.distributed.nproc_per_node: 8 processes but this machine has 2 CUDA GPU(s)"),
])
def test_check_refuses_a_cp_setup_the_machine_cannot_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          distributed: dict, machine: Machine, expected: str) -> None:
    machine_is(monkeypatch, machine)
    root = project(tmp_path / "project", cp={"distributed": distributed})
    code, output = check(root)
    assert code == 2 and expected in output and f"a CP setup this machine ({machine}) cannot run" in output, output
    machine_is(monkeypatch, ROOMY_GPU)
    assert check(root)[0] == 0


def test_check_turns_a_memory_overflow_into_a_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pair = make_trio(tmp_path / "models")
    root = project(tmp_path / "project", upstream={"base_path": str(pair["base"]), "chat_path": str(pair["chat"])})
    machine_is(monkeypatch, Machine(gpus=1, gpu_memory=2**16, cpu_cores=8, memory=64 * GIB))  # estimate: 0.4 MiB
    code, output = check(root)
    assert code == 2 and "total per process" in output, output  # the estimate, then the problem it makes
    assert "cp: each process needs about" in output and "the smallest GPU here holds 0.0 GiB" in output
    machine_is(monkeypatch, ROOMY_GPU)
    assert check(root)[0] == 0


def test_memory_is_compared_with_the_device_that_holds_it() -> None:
    cp = load_params(REPO / "examples" / "real-run" / "params.yaml").cp  # 8 processes, fsdp
    assert cp_setup_problems(cp, ROOMY_GPU, 38 * GIB) == []  # the README's estimate fits an 80 GB GPU
    assert "smallest GPU here holds 24.0 GiB" in cp_setup_problems(
        cp, Machine(gpus=8, gpu_memory=24 * GIB, cpu_cores=64, memory=GIB), 38 * GIB)[0]
    ddp = cp.model_copy(update={"distributed": cp.distributed.model_copy(update={"strategy": "ddp",
                                                                                 "nproc_per_node": 2})})
    assert cp_setup_problems(ddp, CPU_ONLY, 7 * GIB) == []  # on CPU the processes share the RAM: 14 of 16 GiB
    assert "its 2 process(es) need about 18.0 GiB together" in cp_setup_problems(ddp, CPU_ONLY, 9 * GIB)[0]


# --- check: a real run's params with settings still sized for the tiny world ----------------------------------

def test_check_warns_about_tiny_world_defaults_in_a_documents_run(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    machine_is(monkeypatch, ROOMY_GPU)
    pair, documents = make_trio(tmp_path / "models"), tmp_path / "documents"
    documents.mkdir()
    (documents / "a.jsonl").write_text('{"text": "kato"}\n')
    root = project(tmp_path / "project", data={"source": "documents", "documents": str(documents)},
                   upstream={"base_path": str(pair["base"]), "chat_path": str(pair["chat"])},
                   eval={"language_scripts": ["Latin"], "sets": {"instruction": "i.jsonl", "multiturn": "i.jsonl",
                                                                 "safety": "s.jsonl"}})
    (root / "i.jsonl").write_text(json.dumps(GOOD_EVAL) + "\n")
    (root / "s.jsonl").write_text(json.dumps({"messages": GOOD_EVAL["messages"], "harmful": False}) + "\n")
    code, output = check(root)
    assert code == 0, output  # warnings, not problems
    warned = [line.split(":")[1].strip() for line in output.splitlines() if line.startswith("warning:")]
    assert warned == ["eval.max_new_tokens", "eval.block_size", "cp.block_size", "cp.learning_rate",
                      "data.heldout_share", "data.heldout_min"]  # align is off in this project
    assert ("warning: eval.max_new_tokens: 8 is sized for the tiny world; a real model needs 128 or more" in output
            and "examples/real-run/params.yaml sets 256" in output)


def test_the_real_run_example_sets_every_value_the_warnings_name() -> None:
    example = load_params(REPO / "examples" / "real-run" / "params.yaml")
    assert tiny_world_warnings(example) == []
    assert {d.key: d.real_run for d in TINY_WORLD_DEFAULTS} == {d.key: setting_value(example, d.key)
                                                               for d in TINY_WORLD_DEFAULTS}
