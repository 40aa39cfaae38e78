"""`eval.engine: continuous`: transformers' continuous batching answers a candidate as padded batches do (the same
answers, ended the same way, on several end-of-turn ids and a byte-level BPE tokenizer), the report names it, and
conversations the library failed are named rather than scored as empty answers."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipelines.evaluate.continuous import continuous_answers
from pipelines.evaluate.generation import generate_answers
from pipelines.evaluate.stage import eval_sets
from pipelines.config import EvalParams
from pipelines.upstream.tokenizer import END_OF_TURN, EOS
from tests.unit.merge_models import byte_bpe, tiny_model
from tests.unit.test_eval_endpoint import (  # noqa: F401 (module fixtures)
    MAX_NEW_TOKENS, _assert_same_answers, _evaluate, candidate, hf_run,
)


def test_continuous_batching_answers_as_padded_batches_do(candidate: dict, hf_run: dict, tmp_path: Path) -> None:
    batched = _evaluate(candidate, tmp_path, engine="continuous")
    _assert_same_answers(hf_run, batched)
    assert [row["answer"] for row in batched["samples"]] == [row["answer"] for row in hf_run["samples"]]
    assert batched["metrics"] == hf_run["metrics"]
    assert batched["speed"]["engine"] == "continuous" and hf_run["speed"]["engine"] == "hf"


def test_several_end_of_turn_ids_end_answers_where_padded_batches_end_them(candidate: dict) -> None:
    tokenizer = AutoTokenizer.from_pretrained(candidate["model"])
    model = AutoModelForCausalLM.from_pretrained(candidate["model"])
    conversations = [e.conversation() for e in eval_sets(EvalParams(), candidate["corpus"])["instruction"][:24]]
    one_stop = [tokenizer.convert_tokens_to_ids(END_OF_TURN)]
    first_words = Counter(a.token_ids[0] for a in generate_answers(model, tokenizer, conversations, one_stop,
                                                                  MAX_NEW_TOKENS, 32) if a.token_ids)
    stops = [*one_stop, tokenizer.convert_tokens_to_ids(EOS), first_words.most_common(1)[0][0]]
    padded = generate_answers(model, tokenizer, conversations, stops, MAX_NEW_TOKENS, 32)
    continuous = continuous_answers(model, tokenizer, conversations, stops, MAX_NEW_TOKENS, 5)
    assert continuous == padded
    assert sum(not a.token_ids and a.terminated for a in continuous) >= 1  # the third stop id ended some at once


def test_a_byte_level_bpe_model_is_answered_as_padded_batches_answer_it() -> None:
    texts = ["the city of kato is oslo .", "what is the city of pogo ?", "pogo lives in rome ."]
    tokenizer = byte_bpe(texts, special_tokens=("<eos>", "<|im_end|>", "<|im_start|>"), eos_token="<eos>",
                         pad_token="<eos>")
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                               "{% endfor %}<|im_start|>assistant\n")  # no generation markers, as hub templates
    model = tiny_model(len(tokenizer), seed=3)
    stops = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<eos>")]
    conversations = [[{"role": "user", "content": text}] for text in texts * 4]
    assert continuous_answers(model, tokenizer, conversations, stops, 12, 4) == generate_answers(
        model, tokenizer, conversations, stops, 12, 32)


def test_conversations_the_library_failed_are_named(candidate: dict) -> None:
    tokenizer = AutoTokenizer.from_pretrained(candidate["model"])
    model = tiny_model(len(tokenizer) - 40, seed=1)  # its embedding lacks the vocabulary's last rows
    unknown = tokenizer.convert_ids_to_tokens(len(tokenizer) - 1)
    conversations = [[{"role": "user", "content": f"what is {unknown} ?"}]]
    with pytest.raises(RuntimeError, match=r"continuous batching answered 0 of 1 "
                                                                   r"conversations; conversations 0 failed: index"):
        continuous_answers(model, tokenizer, conversations, [tokenizer.convert_tokens_to_ids(EOS)], 4, 2)


def test_a_generation_config_continuous_batching_would_not_apply_is_refused(candidate: dict) -> None:
    tokenizer = AutoTokenizer.from_pretrained(candidate["model"])
    model = AutoModelForCausalLM.from_pretrained(candidate["model"])
    model.generation_config.repetition_penalty = 1.3  # hf applies it to greedy answers too
    conversations = [e.conversation() for e in eval_sets(EvalParams(), candidate["corpus"])["instruction"][:4]]
    with pytest.raises(ValueError, match="RepetitionPenaltyLogitsProcessor, which transformers' continuous batching"):
        continuous_answers(model, tokenizer, conversations, [tokenizer.convert_tokens_to_ids(EOS)], 4, 2)
