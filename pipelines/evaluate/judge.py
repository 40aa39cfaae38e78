"""Optional LLM judge: an OpenAI-compatible chat endpoint rates each instruction answer from 1 to 10.

Off unless `eval.judge_model` names a model; the endpoint and key come from the environment
(OPENAI_BASE_URL, OPENAI_API_KEY), never from params, so no secret lands in git or in MLflow.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import httpx

RATING = re.compile(r"\[\[(\d+(?:\.\d+)?)\]\]")
INSTRUCTIONS = (
    "You are grading one answer of an AI assistant. Judge how helpful, correct and relevant it is to the "
    "user's question, using the reference answer as ground truth. Write one sentence of explanation, then the "
    "score from 1 (useless) to 10 (perfect) in double brackets, like [[6]]."
)


@dataclass(frozen=True)
class Judge:
    """A chat-completions endpoint and the model that grades."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 60.0

    @classmethod
    def from_environment(cls, model: str) -> "Judge":
        """The endpoint named by OPENAI_BASE_URL (and OPENAI_API_KEY when the endpoint needs one)."""
        base_url = os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise ValueError(f"eval.judge_model is {model!r} but OPENAI_BASE_URL is not set: name the judge's "
                             "OpenAI-compatible endpoint (e.g. http://127.0.0.1:8000/v1) or set judge_model: null")
        return cls(base_url.rstrip("/"), model, os.environ.get("OPENAI_API_KEY"))

    def rate(self, client: httpx.Client, question: str, answer: str, reference: str) -> float | None:
        """The judge's 1-10 score of one answer; None when its reply holds no [[score]]."""
        prompt = f"{INSTRUCTIONS}\n\n[Question]\n{question}\n\n[Reference]\n{reference}\n\n[Answer]\n{answer}"
        response = client.post(f"{self.base_url}/chat/completions", json={
            "model": self.model, "temperature": 0, "messages": [{"role": "user", "content": prompt}]})
        response.raise_for_status()
        match = RATING.search(response.json()["choices"][0]["message"]["content"])
        return min(10.0, max(1.0, float(match.group(1)))) if match else None

    def rate_all(self, items: list[tuple[str, str, str]]) -> list[float | None]:
        """Scores of (question, answer, reference) triples; an unreachable endpoint is an error naming it."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        transport = httpx.HTTPTransport(retries=2)
        try:
            with httpx.Client(headers=headers, timeout=self.timeout_s, transport=transport) as client:
                return [self.rate(client, *item) for item in items]
        except httpx.HTTPError as error:
            raise RuntimeError(f"judge endpoint {self.base_url}: {error}") from None


def judge_score(ratings: list[float | None]) -> float:
    """Mean rating over the answers the judge scored (0 when it scored none)."""
    scored = [r for r in ratings if r is not None]
    return sum(scored) / len(scored) if scored else 0.0
