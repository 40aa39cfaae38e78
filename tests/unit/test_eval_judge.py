"""The optional LLM judge against a real HTTP endpoint speaking the OpenAI chat-completions shape."""
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipelines.evaluate.judge import Judge, judge_score


class _Grader(BaseHTTPRequestHandler):
    """Rates 9 when the answer holds the reference, 2 when not, and answers without a score for 'mumble'."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        self.server.seen.append((self.path, self.headers.get("Authorization"), body["model"]))  # type: ignore[attr-defined]
        answer = prompt.split("[Answer]\n")[1]
        reference = prompt.split("[Reference]\n")[1].split("\n")[0]
        text = "no idea" if "mumble" in answer else f"Fair. [[{9 if reference in answer else 2}]]"
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Grader)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_judge_rates_answers_through_the_endpoint(endpoint: ThreadingHTTPServer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{endpoint.server_port}/v1/")
    monkeypatch.setenv("OPENAI_API_KEY", "k-123")
    judge = Judge.from_environment("grader-1")
    ratings = judge.rate_all([("city of kato?", "oslo .", "oslo"), ("pet of kato?", "rome .", "owl"),
                              ("job of kato?", "mumble", "poet")])
    assert ratings == [9.0, 2.0, None]
    assert judge_score(ratings) == 5.5
    assert endpoint.seen[0] == ("/v1/chat/completions", "Bearer k-123", "grader-1")  # type: ignore[attr-defined]


def test_judge_needs_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="OPENAI_BASE_URL is not set"):
        Judge.from_environment("grader-1")


def test_unreachable_judge_is_named() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    judge = Judge(f"http://127.0.0.1:{port}/v1", "grader-1", timeout_s=2)
    with pytest.raises(RuntimeError, match=rf"judge endpoint http://127.0.0.1:{port}/v1"):
        judge.rate_all([("q", "a", "r")])
