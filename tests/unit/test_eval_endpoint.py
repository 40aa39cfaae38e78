"""`eval.engine: openai`: a candidate answered by a real OpenAI-compatible server (`transformers serve`, on the CPU)
started by the stage or already running, scored as the hf engine's answers are; a server that fails is named with
its log and leaves no process behind."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import torch
from tokenizers import processors
from transformers import AutoTokenizer

from pipelines.atomic import read_jsonl
from pipelines.config import DataParams, EvalParams, ParamsError, validate_params
from pipelines.corpus.stage import build_corpus
from pipelines.evaluate.endpoint import answer_from_choice, prompt_field, request_fields, text_prompt
from pipelines.evaluate.generation import Generation, chat_prompt
from pipelines.evaluate.server import EVAL_BASE_URL, EVAL_MODEL, RUN_MARK, EndpointError
from pipelines.evaluate.stage import eval_sets, evaluate_candidate
from pipelines.upstream.tokenizer import END_OF_TURN, EOS, as_chat_tokenizer, build_word_tokenizer
from tests.conftest import free_port, wait_until
from tests.unit.merge_models import byte_bpe, save, tiny_model

TRANSFORMERS = Path(sys.executable).parent / "transformers"
SERVE = f"{TRANSFORMERS} serve {{model}} --host 127.0.0.1 --port {{port}} --device cpu --dtype float32"
MAX_NEW_TOKENS = 9


def _words(corpus: Path) -> list[str]:
    """The texts of the evaluation sets, to train a word-level vocabulary on."""
    sets = eval_sets(EvalParams(), corpus)
    return [text for examples in sets.values() for e in examples
            for text in [*(turn.content for turn in e.messages), e.reference or ""]]


@pytest.fixture(scope="module")
def candidate(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny model on the default world's eval sets whose answers end in every way within MAX_NEW_TOKENS: before
    its last token, on it (the servers then say `length`), or not at all. Seed 26 with its end-of-turn row scaled
    by 1.5 does (random seeds mostly repeat one token, or say special tokens, which a server's text drops). Its own
    generation config names <eos>, as a CP model's does; the chat model's (the same weights) names <|end|>, what
    the evaluation stops on."""
    root = tmp_path_factory.mktemp("endpoint")
    build_corpus(DataParams(source_entities=8, target_entities=8), root / "corpus", root / "stats.json")
    tokenizer = as_chat_tokenizer(build_word_tokenizer(_words(root / "corpus")))
    model = tiny_model(len(tokenizer), seed=26)
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    with torch.no_grad():
        model.lm_head.weight[end] *= 1.5
    model.generation_config.eos_token_id = end
    chat = save(model, tokenizer, root / "chat")
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(EOS)
    return {"model": save(model, tokenizer, root / "candidate"), "chat": chat, "corpus": root / "corpus"}


def _evaluate(candidate: dict, out: Path, model_dir: Path | None = None, **eval_params: object) -> dict:
    """evaluate_candidate of the candidate (or `model_dir`) on the CPU; its samples, metrics and speed report."""
    params = EvalParams(device="cpu", max_questions=40, max_new_tokens=MAX_NEW_TOKENS, **eval_params)
    paths = {"metrics_path": out / "metrics.json", "samples_path": out / "samples.jsonl",
             "speed_path": out / "speed.json"}
    evaluate_candidate(model_dir=model_dir or candidate["model"], chat_dir=candidate["chat"],
                       corpus_dir=candidate["corpus"], params=params, **paths)
    return {"samples": read_jsonl(paths["samples_path"]), "metrics": json.loads(paths["metrics_path"].read_text()),
            "speed": json.loads(paths["speed_path"].read_text())}


@pytest.fixture(scope="module")
def hf_run(candidate: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _evaluate(candidate, tmp_path_factory.mktemp("hf"))


@pytest.fixture
def server_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temporary folder the stage's server logs go to, this test's own."""
    folder = tmp_path / "temp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _assert_same_answers(hf: dict, served: dict) -> None:
    pairs = list(zip(hf["samples"], served["samples"], strict=True))
    same = sum(a["answer"] == b["answer"] for a, b in pairs)
    assert same >= 0.95 * len(pairs), [(a["answer"], b["answer"]) for a, b in pairs if a["answer"] != b["answer"]]
    assert [a["terminated"] for a, _ in pairs] == [b["terminated"] for _, b in pairs]
    assert [a["repetition"] for a, b in pairs if a["answer"] == b["answer"]] == [
        b["repetition"] for a, b in pairs if a["answer"] == b["answer"]]  # the same token ids, as hf read them
    assert served["metrics"]["target_perplexity"] == hf["metrics"]["target_perplexity"]  # in-process either way


def test_a_started_server_answers_as_hf_does(candidate: dict, hf_run: dict, server_temp: Path,
                                             tmp_path: Path) -> None:
    ends = {"cut" if not row["terminated"] else "on the last token"
            if len(row["answer"].split()) == MAX_NEW_TOKENS - 1 else "before" for row in hf_run["samples"]}
    assert ends == {"before", "on the last token", "cut"}  # the fixture's answers end in every way
    before = _children()
    served = _evaluate(candidate, tmp_path / "served", engine="openai",
                       server={"command": SERVE, "dialect": "transformers", "concurrency": 4})
    _assert_same_answers(hf_run, served)
    assert hf_run["speed"]["engine"] == "hf" and served["speed"]["engine"] == "openai"
    assert served["speed"]["server"] == SERVE  # as params write it: no port, no temporary path
    assert not list(server_temp.iterdir())  # the log of a clean run is removed
    assert _children() <= before  # the server and its group are stopped


def test_a_server_that_exits_at_once_is_named_with_its_log(candidate: dict, server_temp: Path,
                                                          tmp_path: Path) -> None:
    # the shell leaves a child behind in its process group: the stage stops the group, not only the shell
    command = "sh -c 'sleep 300 & echo lingering $!; echo no accelerator here; exit 3' {model} {port}"
    with pytest.raises(EndpointError) as raised:
        _evaluate(candidate, tmp_path / "out", engine="openai", server={"command": command})
    (log,) = server_temp.glob("*/server.log")
    message = str(raised.value)
    assert "eval.server.command `sh -c" in message and "exited with code 3" in message
    assert str(log) in message and "no accelerator here" in message  # the log, named and quoted
    assert not _alive(log)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_a_failed_answer_stops_the_started_server_and_keeps_its_log(candidate: dict, server_temp: Path,
                                                                   tmp_path: Path) -> None:
    # transformers serve refuses the vllm dialect's fields
    before = _children()
    with pytest.raises(EndpointError) as raised:
        _evaluate(candidate, tmp_path / "out", engine="openai", server={"command": SERVE, "dialect": "vllm"})
    (log,) = server_temp.glob("*/server.log")
    message = str(raised.value)
    assert f"eval.server.command `{TRANSFORMERS} serve {candidate['model'].resolve()}" in message
    assert f"(its output: {log}): POST http://127.0.0.1:" in message and f"for {candidate['model'].resolve()}" in message
    assert "(eval.server.dialect: vllm): 422" in message and "stop_token_ids" in message
    assert "POST /v1/completions HTTP/1.1\" 422" in log.read_text()
    assert _children() <= before


def _children() -> set[int]:
    """This process's live descendants (an xdist worker may hold some from earlier tests: compare before and after)."""
    return {child.pid for child in psutil.Process().children(recursive=True) if _alive_process(child)}


def _alive_process(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _alive(log: Path) -> bool:
    """Whether the process the log's shell left behind still runs (a zombie not yet reaped does not)."""
    pid = int(log.read_text().split("lingering ")[1].split()[0])
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_server_that_never_answers_is_stopped_after_its_time(candidate: dict, server_temp: Path,
                                                               tmp_path: Path) -> None:
    with pytest.raises(EndpointError, match=r"did not answer GET http://127\.0\.0\.1:\d+/v1/models within 1 s "
                                            r"\(eval\.server\.start_timeout_s\)"):
        before = _children()
        _evaluate(candidate, tmp_path / "out", engine="openai",
                  server={"command": "sh -c 'sleep 300' {model} {port}", "start_timeout_s": 1.0})
    assert _children() <= before


@pytest.fixture
def running_server(candidate: dict, tmp_path: Path) -> Iterator[str]:
    """`transformers serve` pinned to the candidate, started here as a team's server would be; stopped by its
    process group. Its base URL."""
    port = free_port()
    with (tmp_path / "serve.log").open("wb") as log:
        server = subprocess.Popen([str(TRANSFORMERS), "serve", str(candidate["model"].resolve()), "--host",
                                   "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "float32"],
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until(lambda: _answers(f"{url}/models"), "transformers serve", seconds=60, interval=0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
        return True
    except httpx.TransportError:
        return False


def test_the_server_running_at_the_environment_variable(candidate: dict, hf_run: dict, running_server: str,
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVAL_BASE_URL, running_server)
    server = {"dialect": "transformers", "concurrency": 4}
    served = _evaluate(candidate, tmp_path / "served", engine="openai", server=server)
    _assert_same_answers(hf_run, served)
    assert served["speed"] == {"answers_per_second": served["speed"]["answers_per_second"], "engine": "openai",
                               "server": running_server.removeprefix("http://").removesuffix("/v1")}
    other = shutil.copytree(candidate["model"], tmp_path / "other")  # a model the server does not serve
    with pytest.raises(EndpointError) as raised:
        _evaluate(candidate, tmp_path / "other-out", model_dir=other, engine="openai", server=server)
    message = str(raised.value)
    assert f"{EVAL_BASE_URL}={running_server}: POST {running_server}/completions for {other.resolve()}" in message
    assert "400" in message and "pinned" in message  # the server's own words
    monkeypatch.setenv(EVAL_MODEL, str(candidate["model"].resolve()))  # the name the server serves the model under
    renamed = _evaluate(candidate, tmp_path / "renamed", model_dir=other, engine="openai", server=server)
    _assert_same_answers(hf_run, renamed)
    assert renamed["speed"]["server"].endswith(f", model {candidate['model'].resolve()}")  # the name asked
    monkeypatch.setenv(RUN_MARK, "a-run")  # inside `chatgraft run`, every candidate would ask that one model
    with pytest.raises(EndpointError, match=f"{EVAL_MODEL} names one served model for every candidate"):
        _evaluate(candidate, tmp_path / "in-a-run", model_dir=other, engine="openai", server=server)


def test_no_command_and_no_url_is_an_error_before_any_model_loads(candidate: dict, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EVAL_BASE_URL, raising=False)
    with pytest.raises(EndpointError, match=f"eval.server.command is null, but {EVAL_BASE_URL} is not set"):
        _evaluate(candidate, tmp_path / "out", engine="openai")


@pytest.mark.parametrize("command, named", [("vllm serve {model}", "['model']"),
                                            ("vllm serve {model} --port {port} --x {gpu}", "['gpu', 'model', 'port']")])
def test_a_command_must_name_the_model_and_the_port(command: str, named: str) -> None:
    with pytest.raises(ParamsError, match=rf"eval\.server\.command: .*got {re.escape(named)}"):
        validate_params({"eval": {"engine": "openai", "server": {"command": command}}})


def test_a_text_prompt_leaves_out_the_bos_the_server_adds_again() -> None:
    tokenizer = byte_bpe(["the city of kato is oslo ."], special_tokens=("<s>", "<eos>"), bos_token="<s>")
    bos = tokenizer.convert_tokens_to_ids("<s>")
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    prompt = "<s>the city of"  # as a template that writes its BOS renders it
    sent = text_prompt(tokenizer, prompt, "some-model")
    assert sent == "the city of"
    assert tokenizer(sent)["input_ids"] == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with pytest.raises(EndpointError, match="some-model: its tokenizer adds special tokens"):
        text_prompt(tokenizer, "the city of", "some-model")  # no BOS written: none can be left out


def test_the_vllm_dialect_sends_the_ids_hf_feeds_and_reads_the_ids_it_gets(candidate: dict) -> None:
    """vLLM (not on this machine) as its API reads: the prompt as ids, the stop ids, the answer's ids back."""
    tokenizer = AutoTokenizer.from_pretrained(candidate["model"])
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    assert request_fields("vllm", "/models/m", [end], 9) == {
        "model": "/models/m", "max_tokens": 9, "temperature": 0, "stop_token_ids": [end], "ignore_eos": True,
        "return_token_ids": True}
    prompt = chat_prompt(tokenizer, [{"role": "user", "content": "what is the city of pogo ?"}])
    assert prompt_field("vllm", tokenizer, prompt, "/models/m") == tokenizer(prompt, add_special_tokens=False)[
        "input_ids"]
    ids = tokenizer("pet of what", add_special_tokens=False)["input_ids"]
    ended_on_the_last_token = {"text": "pet of what", "finish_reason": "length", "token_ids": [*ids, end]}
    assert answer_from_choice(ended_on_the_last_token, tokenizer, [end], len(ids) + 1) == Generation(
        "pet of what", ids, True)
    cut = {"text": "pet of what", "finish_reason": "length", "token_ids": ids}
    assert answer_from_choice(cut, tokenizer, [end], len(ids)) == Generation("pet of what", ids, False)


def test_a_killed_stage_takes_its_server_with_it(candidate: dict, tmp_path: Path) -> None:
    """SIGKILL (the OOM killer) runs no `finally`: the kernel's parent-death signal stops the server instead."""
    server = f"{sys.executable} -c 'import time; time.sleep(300)' {{model}} {{port}}"  # never answers: still waiting
    stage = subprocess.Popen([sys.executable, "-c", (
        "import sys; from pathlib import Path; from pipelines.config import EvalServerParams; "
        "from pipelines.evaluate.server import candidate_endpoint; "
        f"candidate_endpoint(EvalServerParams(command={server!r}, start_timeout_s=300), Path(sys.argv[1])).__enter__()"
    ), str(candidate["model"])], cwd=Path(__file__).resolve().parents[2])
    def server() -> list[psutil.Process]:  # once it runs the command: the prctl came before
        return [p for p in psutil.Process(stage.pid).children() if "time.sleep(300)" in " ".join(p.cmdline())]

    wait_until(server, "the server started", seconds=60, interval=0.2)
    (started,) = server()
    try:
        os.kill(stage.pid, signal.SIGKILL)
        stage.wait()
        wait_until(lambda: not _alive_process(started), "the server stopped", seconds=15, interval=0.2)
    finally:
        _signal_group_if_alive(started)


def _signal_group_if_alive(process: psutil.Process) -> None:
    """SIGKILL the process group `process` leads, when it is still there (a failed test leaves nothing behind)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
