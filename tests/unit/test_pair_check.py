"""Can a base/chat pair be merged? Checked from headers and tokenizers, every problem listed: through the pair
check, `chatgraft check` and the upstream stage, on word-level and byte-level BPE pairs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner
from transformers import AutoTokenizer

from flows.cli import app
from pipelines.config import UpstreamParams
from pipelines.upstream.stage import build_upstream
from pipelines.upstream.pair_check import check_pair
from tests.unit.merge_models import byte_bpe, make_trio, perturbed, save, tiny_model
from tests.unit.test_bad_input import project
from tests.unit.test_chat_mask import CHATML

TEXT = ["the city of kato is oslo . what is the city of kato ?"] * 20


def hub_pair(root: Path) -> dict[str, Path]:
    """A byte-level BPE base, and its chat model with two added ChatML tokens, a template and end-of-turn ids."""
    base_tokenizer = byte_bpe(TEXT)
    base = tiny_model(len(base_tokenizer))
    save(base, base_tokenizer, root / "base")
    chat_tokenizer = AutoTokenizer.from_pretrained(root / "base")
    chat_tokenizer.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    chat_tokenizer.chat_template = CHATML
    chat = perturbed(tiny_model(len(chat_tokenizer)), 1)
    chat.generation_config.eos_token_id = [chat_tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                           chat_tokenizer.eos_token_id]
    save(chat, chat_tokenizer, root / "chat")
    return {"base": root / "base", "chat": root / "chat"}


def test_a_hub_format_pair_passes_and_the_tokens_to_reconcile_are_counted(tmp_path: Path) -> None:
    report = check_pair(hub_pair(tmp_path))
    assert report.problems == []
    assert report.tokens["tokens_only_in_chat"] == {"count": 2, "examples": ["<|im_end|>", "<|im_start|>"]}
    assert report.tokens["ids_moved_in_chat"]["count"] == 0 and report.end_of_turn == ["<|im_end|>", "<eos>"]
    assert "<|im_end|>" in report.chat_special_tokens


def test_every_problem_is_listed(tmp_path: Path) -> None:
    trio = make_trio(tmp_path)
    wider = tiny_model(40, intermediate_size=48)  # same architecture, other MLP width
    tokenizer = AutoTokenizer.from_pretrained(trio["base"])
    tokenizer.chat_template = None
    save(wider, tokenizer, tmp_path / "other-chat")
    report = check_pair({"base": trio["base"], "chat": tmp_path / "other-chat"})
    mlp = [p for p in report.problems if "mlp" in p]
    assert len(mlp) == 2 * 3  # gate, up and down of both layers
    assert "tensor 'model.layers.0.mlp.up_proj.weight': base (32, 16), chat (48, 16)" in mlp
    assert any("no chat template" in p for p in report.problems)


def test_check_prints_the_pair_and_the_memory_it_needs(tmp_path: Path) -> None:
    pair = hub_pair(tmp_path / "models")
    root = project(tmp_path / "project", upstream={"base_path": str(pair["base"]), "chat_path": str(pair["chat"])})
    done = CliRunner().invoke(app, ["check", "--project-dir", str(root)])
    assert done.exit_code == 0, done.output
    assert "tokens only in chat: 2 (e.g. ['<|im_end|>', '<|im_start|>'])" in done.output
    assert "llama, full fine-tuning" in done.output and "valid, and every input it names is usable" in done.output


def test_check_refuses_a_pair_that_cannot_merge(tmp_path: Path) -> None:
    trio = make_trio(tmp_path / "models")
    save(tiny_model(40, num_hidden_layers=3), AutoTokenizer.from_pretrained(trio["chat"]), tmp_path / "models" / "deep")
    root = project(tmp_path / "project", upstream={"base_path": str(trio["base"]),
                                                   "chat_path": str(tmp_path / "models" / "deep")})
    done = CliRunner().invoke(app, ["check", "--project-dir", str(root)])
    assert done.exit_code == 2 and "upstream: 9 tensor(s) missing from base" in done.output, done.output


def test_the_upstream_stage_writes_the_report_and_refuses_a_bad_pair(tmp_path: Path) -> None:
    trio = make_trio(tmp_path / "models")
    args = ("domain", tmp_path / "corpus", tmp_path / "upstream", tmp_path / "metrics.json", tmp_path / "plots",
            tmp_path / "reports" / "upstream.json")
    (tmp_path / "plots").mkdir()
    build_upstream(UpstreamParams(base_path=str(trio["base"]), chat_path=str(trio["chat"])), *args)
    assert json.loads(args[-1].read_text())["problems"] == []
    (trio["chat"] / "chat_template.jinja").unlink()  # the chat template is gone
    with pytest.raises(ValueError, match="cannot be merged"):
        build_upstream(UpstreamParams(base_path=str(trio["base"]), chat_path=str(trio["chat"])), *args)
    assert "no chat template" in json.loads(args[-1].read_text())["problems"][0]
