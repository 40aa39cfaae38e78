"""Answer scores on hand-made answers with known values."""
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pipelines.evaluate.degeneration import repetition_rate
from pipelines.evaluate.instruction import answer_correct, normalize
from pipelines.evaluate.perplexity import perplexity
from pipelines.upstream.tokenizer import as_chat_tokenizer, build_word_tokenizer


def test_normalize_drops_case_and_punctuation() -> None:
    assert normalize("The City of Kato is OSLO .") == ["the", "city", "of", "kato", "is", "oslo"]


@pytest.mark.parametrize("answer, reference, terminated, expected", [
    ("the city of kato is oslo .", "oslo", True, True),
    ("oslo .", "oslo", True, True),
    ("the city of kato is oslo .", "oslo", False, False),  # never ended: not a usable answer
    ("the city of kato is lima .", "oslo", True, False),
    ("osloo", "oslo", True, False),  # whole words only
    ("new york is big", "new york", True, True),
    ("york new", "new york", True, False),
])
def test_answer_correct(answer: str, reference: str, terminated: bool, expected: bool) -> None:
    assert answer_correct(answer, reference, terminated) is expected


def test_repetition_rate_counts_repeated_ngrams() -> None:
    assert repetition_rate([1, 2, 3, 4], 2) == 0.0
    assert repetition_rate([1, 2, 1, 2, 1, 2], 2) == pytest.approx(1 - 2 / 5)  # 5 bigrams, 2 distinct
    assert repetition_rate([7, 7, 7, 7], 3) == pytest.approx(0.5)
    assert repetition_rate([1, 2], 3) == 0.0  # too short to repeat


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size() -> None:
    tokenizer = build_word_tokenizer(["a b c d e f g h"])
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: uniform next-token distribution
    value = perplexity(model, tokenizer, ["a b c d e f g h", "a b c"] * 4, max_tokens=8, batch_size=3)
    assert value == pytest.approx(len(tokenizer), rel=1e-4)
    assert math.isfinite(value)


def test_perplexity_does_not_depend_on_what_the_tokenizer_calls_eos() -> None:
    tokenizer = build_word_tokenizer(["the city of kato is oslo .", "the pet of mira is cat ."])
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    texts = ["the city of kato is oslo .", "the pet of mira is cat .", "the city of mira is"]
    plain = perplexity(model, tokenizer, texts, max_tokens=16, batch_size=2)
    chat = perplexity(model, as_chat_tokenizer(tokenizer), texts, max_tokens=16, batch_size=2)  # EOS = <|end|>
    assert plain == pytest.approx(chat, rel=1e-6)
