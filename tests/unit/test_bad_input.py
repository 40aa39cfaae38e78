"""Bad input, case by case: a clear error naming the file, line, key or tensor; an exit code that is not 0;
nothing outside the intended output touched; no partial output. Checked through the commands a user runs:
`chatgraft check` (what `chatgraft run` does before its first stage), `chatgraft run --set` and `chatgraft merge`."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from flows.cli import app
from pipelines.atomic import MAX_RECORD_BYTES
from pipelines.upstream.tokenizer import build_word_tokenizer
from tests.conftest import TINY_PARAMS, free_port
from tests.unit.merge_models import make_trio

GOOD_EVAL = {"messages": [{"role": "user", "content": "what is the pet of vimi ?"}], "reference": "dog"}
GOOD_SFT = {"prompt": "what is the pet of vimi ?", "answer": "a dog ."}


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and modification time (links as themselves)."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def project(root: Path, **sections: dict) -> Path:
    """A project folder holding the tiny world's params.yaml with `sections` merged in (key by key)."""
    params = yaml.safe_load(yaml.safe_dump(TINY_PARAMS))
    for name, changes in sections.items():
        params[name] = {**params.get(name, {}), **changes}
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def refused(root: Path, *expected: str, command: tuple[str, ...] = ("check",)) -> str:
    """Run a command on the project at root; it must exit 2, name each expected fragment and change nothing."""
    before = tree(root.parent)
    code, output = invoke(*command, "--project-dir", str(root))
    assert code == 2, output
    for fragment in expected:
        assert fragment in output, output
    assert tree(root.parent) == before
    return output


# --- params.yaml: every section, unknown key, wrong type, out-of-range value, path that does not exist ---------

PARAMS_CASES = {
    "data": [({"colour": "red"}, "data.colour: unknown key"),
             ({"seed": "abc"}, "data.seed: Input should be a valid integer"),
             ({"values_per_attribute": 99}, "data.values_per_attribute: Input should be less than or equal to 8")],
    "upstream": [({"width": 3}, "upstream.width: unknown key"),
                 ({"pretrain": {"steps": "many", "learning_rate": 0.1}}, "upstream.pretrain.steps: Input should be"),
                 ({"tiny": {"num_layers": 0}}, "upstream.tiny.num_layers: Input should be greater than or equal to 1"),
                 ({"base_path": "/nowhere/base", "chat_path": "/nowhere/chat"},
                  "upstream.base_path: /nowhere/base: no such folder")],
    "cp": [({"lr": 0.1}, "cp.lr: unknown key"),
           ({"learning_rate": "fast"}, "cp.learning_rate: Input should be a valid number"),
           ({"batch_size": 0}, "cp.batch_size: Input should be greater than or equal to 1")],
    "merge": [({"mode": "ties"}, "merge.mode: unknown key"),
              ({"ratios": "half"}, "merge.ratios: Input should be a valid list"),
              ({"density": 2.0}, "merge.density: Input should be less than or equal to 1"),
              ({"method": "slerp"}, "merge.method: Input should be 'task_arithmetic', 'ties' or 'dare_linear'"),
              ({"vectors": [{"name": "domain", "base": "gone/base", "tuned": "gone/tuned"}]},
               "merge.vectors.0.base: ")],
    "eval": [({"temperature": 0.7}, "eval.temperature: unknown key"),
             ({"max_new_tokens": 1.5}, "eval.max_new_tokens: Input should be a valid integer"),
             ({"max_questions": 0}, "eval.max_questions: Input should be greater than or equal to 1"),
             ({"sets": {"instruction": "sets/missing.jsonl"}}, "eval.sets.instruction: "),
             ({"refusal_classifier": "models/refusals"}, "eval.refusal_classifier: "),
             ({"lm_eval_tasks": ["target_facts"], "lm_eval_include_path": "tasks"}, "eval.lm_eval_include_path: ")],
    "promote": [({"winner": "me"}, "promote.winner: unknown key"),
                ({"higher_is_better": "sometimes"}, "promote.higher_is_better: Input should be a valid boolean"),
                ({"register_top_k": 0}, "promote.register_top_k: Input should be greater than or equal to 1")],
    "align": [({"epochs": 3}, "align.epochs: unknown key"),
              ({"methods": "sft"}, "align.methods: Input should be a valid list"),
              ({"curation": {"temperature": 0}}, "align.curation.temperature: Input should be greater than 0"),
              ({"data": "sft/missing.jsonl"}, "align.data: ")],
    "flow": [({"workers": 4}, "flow.workers: unknown key"),
             ({"retries": "twice"}, "flow.retries: Input should be a valid integer"),
             ({"gpu_slots": 0}, "flow.gpu_slots: Value error, at least 1 slot"),
             ({"gpu_slots": [0, 0]}, "flow.gpu_slots: Value error, a list of distinct CUDA device ids"),
             ({"inbox": "no-such-inbox"}, "flow.inbox: ")],
}


@pytest.mark.parametrize("section, changes, expected", [
    (section, changes, expected) for section, cases in PARAMS_CASES.items() for changes, expected in cases
])
def test_params_errors_name_the_key(tmp_path: Path, section: str, changes: dict, expected: str) -> None:
    root = project(tmp_path / "project", **{section: changes})
    output = refused(root, expected)
    for written in ("/nowhere/base", "gone/base", "missing.jsonl", "refusals", "tasks", "no-such-inbox"):
        if written in json.dumps(changes):  # a missing path is named as written, with what is wrong with it
            assert written in output and ("no such" in output), output


def test_run_refuses_before_the_first_stage(tmp_path: Path) -> None:
    root = project(tmp_path / "project", eval={"sets": {"safety": "sets/safety.jsonl"}})
    refused(root, "eval.sets.safety: ", "safety.jsonl: no such file", command=("run",))
    assert sorted(p.name for p in root.iterdir()) == ["params.yaml"]  # no data, models, store or DVC state


# --- `--set` forms: refused, params.yaml left byte for byte -----------------------------------------------------

@pytest.mark.parametrize("override, expected", [
    ("cp.steps", "expected KEY.PATH=VALUE"),
    ("=3", "expected KEY.PATH=VALUE"),
    ("cp..steps=3", "expected KEY.PATH=VALUE"),
    ("training.steps=3", "has no section 'training' on the way to training.steps"),
    ("cp.steps.every=3", "cp.steps in"),
    ("cp.stepz=3", "cp.stepz: unknown key"),
    ("cp.steps=[1", "the value is not valid YAML"),
    ("cp.steps=many", "cp.steps: Input should be a valid integer"),
    ("merge.ratios=[1]", "write ratios as floats"),
])
def test_set_forms(tmp_path: Path, override: str, expected: str) -> None:
    root = project(tmp_path / "project")
    text = (root / "params.yaml").read_bytes()
    refused(root, expected, command=("run", "--set", override))
    assert (root / "params.yaml").read_bytes() == text


# --- eval and SFT sets -------------------------------------------------------------------------------------------

def _lines(*rows: object) -> bytes:
    return b"".join((row if isinstance(row, bytes) else json.dumps(row).encode()) + b"\n" for row in rows)


SET_CASES = {
    "malformed line": (_lines(GOOD_EVAL, b'{"messages": ['), _lines(GOOD_SFT, b'{"prompt": "x", '),
                       ":2: not valid JSON", ":2: not valid JSON"),
    "missing field": (_lines({"messages": GOOD_EVAL["messages"]}), _lines({"prompt": "what ?"}),
                      ":1: reference: required in this set", ":1: key 'answer' must be a non-empty string"),
    "wrong types": (_lines({**GOOD_EVAL, "messages": [{"role": "user", "content": 5}]}), _lines({**GOOD_SFT, "prompt": 5}),
                    ":1: messages.0.content: Input should be a valid string", ":1: key 'prompt' must be a non-empty"),
    "empty file": (b"", b"\n", ": no examples (an empty evaluation set)", ": the SFT set is empty"),
    "invalid UTF-8": (_lines(GOOD_EVAL, b'{"reference": "caf\xe9"}'), _lines(b'{"prompt": "\xff"}'),
                      ":2: not UTF-8 text (byte 0xe9", ":1: not UTF-8 text (byte 0xff"),
}


@pytest.mark.parametrize("case", SET_CASES)
def test_eval_and_sft_set_errors_name_file_and_line(tmp_path: Path, case: str) -> None:
    eval_bytes, sft_bytes, eval_error, sft_error = SET_CASES[case]
    root = project(tmp_path / "project", eval={"sets": {"instruction": "sets/instruction.jsonl"}},
                   align={"data": "sets/sft.jsonl"})
    (root / "sets").mkdir()
    (root / "sets" / "instruction.jsonl").write_bytes(eval_bytes)
    (root / "sets" / "sft.jsonl").write_bytes(sft_bytes)
    refused(root, f"eval.sets.instruction: {root}/sets/instruction.jsonl{eval_error}",
            f"align.data: {root}/sets/sft.jsonl{sft_error}")


def test_a_100_mb_line_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    root = project(tmp_path / "project", eval={"sets": {"instruction": "huge.jsonl"}})
    with (root / "huge.jsonl").open("wb") as handle:
        handle.write(_lines(GOOD_EVAL))
        handle.write(b'{"reference": "' + b"a" * (100 * 2**20) + b'"}\n')
    assert MAX_RECORD_BYTES < 100 * 2**20
    refused(root, f"huge.jsonl:2: line longer than {MAX_RECORD_BYTES // 2**20} MiB")


# --- model folders: through `chatgraft merge` (exit 1, no output) and `chatgraft check` (upstream paths) -------

def _no_weights(model: Path) -> str:
    (model / "model.safetensors").unlink()
    return f"{model}: no model.safetensors"


def _no_config(model: Path) -> str:
    (model / "config.json").unlink()
    return f"{model}/config.json: no usable model config"


def _unreadable_config(model: Path) -> str:
    (model / "config.json").write_bytes(b"\xff\xfe\x00garbage")
    return f"{model}/config.json: no usable model config"


def _symlink_loop(model: Path) -> str:
    shutil.rmtree(model)
    model.symlink_to(model)
    return f"{model}: a symlink loop"


def _pickle_only(model: Path) -> str:
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    return f"{model}: only pickle (.bin) weights, which can run code when loaded"


def _tokenizer_of_another_model(model: Path) -> str:
    bigger = build_word_tokenizer(["many more words than the weights have rows for : " + " ".join(
        f"word{i}" for i in range(50))])
    for file in model.glob("tokenizer*"):
        file.unlink()
    bigger.save_pretrained(model)
    return f"{model}: the tokenizer has {len(bigger)} tokens but tensor '"


MODEL_SPOILERS = [_no_weights, _no_config, _unreadable_config, _symlink_loop, _pickle_only, _tokenizer_of_another_model]


@pytest.mark.parametrize("spoil", MODEL_SPOILERS)
@pytest.mark.parametrize("role", ["base", "chat", "cp"])
def test_bad_model_folders_stop_the_merge(tmp_path: Path, spoil: Callable[[Path], str], role: str) -> None:
    trio = make_trio(tmp_path)
    expected = spoil(trio[role])
    before = tree(tmp_path)
    code, output = invoke("merge", "--base", str(trio["base"]), "--chat", str(trio["chat"]), "--cp", str(trio["cp"]),
                          "--out", str(tmp_path / "merged"))
    assert code == 1 and expected in output, output
    assert tree(tmp_path) == before


@pytest.mark.parametrize("spoil", MODEL_SPOILERS)
def test_bad_real_upstream_folders_are_named_before_a_run(tmp_path: Path, spoil: Callable[[Path], str]) -> None:
    trio = make_trio(tmp_path / "models")
    expected = spoil(trio["chat"])
    root = project(tmp_path / "project", upstream={"base_path": str(trio["base"]), "chat_path": str(trio["chat"])})
    output = refused(root, f"upstream.chat_path: {expected}")
    assert "upstream.base_path" not in output  # the good one is not blamed


def test_merge_config_with_an_unknown_method(tmp_path: Path) -> None:
    trio = make_trio(tmp_path)
    (tmp_path / "merge.yaml").write_text("method: slerp\n")
    before = tree(tmp_path)
    code, output = invoke("merge", "--base", str(trio["base"]), "--chat", str(trio["chat"]), "--cp", str(trio["cp"]),
                          "--out", str(tmp_path / "merged"), "--config", str(tmp_path / "merge.yaml"))
    assert code == 1 and "merge.yaml: invalid params" in output and "method: Input should be 'task_arithmetic'" in output
    assert tree(tmp_path) == before


# --- S3 inbox without credentials, or at a wrong endpoint ----------------------------------------------------

@pytest.fixture
def no_aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance metadata service to ask here
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return monkeypatch


def test_s3_inbox_without_credentials(tmp_path: Path, no_aws_credentials: pytest.MonkeyPatch) -> None:
    root = project(tmp_path / "project", flow={"inbox": "s3://corpus/inbox"})
    refused(root, "flow.inbox: s3://corpus/inbox: no S3 credentials")


def test_s3_inbox_at_a_wrong_endpoint(tmp_path: Path, no_aws_credentials: pytest.MonkeyPatch) -> None:
    no_aws_credentials.setenv("AWS_ACCESS_KEY_ID", "testing")
    no_aws_credentials.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    no_aws_credentials.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    root = project(tmp_path / "project", flow={"inbox": "s3://corpus/inbox"})
    refused(root, "flow.inbox: s3://corpus/inbox: cannot reach the S3 endpoint", "AWS_ENDPOINT_URL")


def test_documents_a_run_cannot_read(tmp_path: Path, no_aws_credentials: pytest.MonkeyPatch) -> None:
    own = {"upstream": {"base_path": "/nowhere/base", "chat_path": "/nowhere/chat"}, "align": {"methods": []},
           "eval": {"language_scripts": ["Latin"], "sets": {"instruction": "i.jsonl", "multiturn": "m.jsonl",
                                                            "safety": "s.jsonl"}}}
    root = project(tmp_path / "s3", data={"source": "documents", "documents": "s3://corpus/ko"}, **own)
    refused(root, "data.documents: s3://corpus/ko: ", "upstream.base_path: /nowhere/base")  # listed before a run
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"text": "kato"}\n')
    (folder / "notes.md").write_text("not a document")
    root = project(tmp_path / "folder", data={"source": "documents", "documents": str(folder)}, **own)
    refused(root, f"data.documents: {folder}: files that are not .txt, .jsonl, .parquet: notes.md")


@pytest.mark.parametrize("command", [["status"], ["history"], ["intake"], ["promote", "1"]])
def test_an_invalid_params_file_is_said_without_a_traceback_by_every_command(tmp_path: Path,
                                                                               command: list[str]) -> None:
    (tmp_path / "params.yaml").write_text("flow: {inbox: 3}\n")
    done = subprocess.run([str(Path(sys.executable).parent / "chatgraft"), *command, "--project-dir", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines() == [f"error: {tmp_path / 'params.yaml'}: invalid params",
                                        "  flow.inbox: Input should be a valid string (got 3)"]
