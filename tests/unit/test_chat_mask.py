"""The assistant-only loss mask on chat templates as hub models ship them (no generation markers): exactly each
assistant reply and the end-of-turn token closing it carry loss."""
from __future__ import annotations

import pytest

from pipelines.training import assistant_only_examples
from pipelines.training.chat_mask import UnstableChatTemplate, assistant_token_mask
from pipelines.padding import IGNORE_INDEX
from pipelines.upstream.tokenizer import as_chat_tokenizer
from tests.unit.merge_models import byte_bpe, word_tokenizer

# Templates in the structure of hub models' (written here, shortened to the parts that place turns)
LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MISTRAL = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
           "{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")
GEMMA = ("{{ bos_token }}{% for m in messages %}<start_of_turn>"
         "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}<end_of_turn>\n"
         "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
# (template, end-of-turn token, tokenizer roles)
HUB = {
    "llama3": (LLAMA3, "<|eot_id|>", {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    "chatml": (CHATML, "<|im_end|>", {"eos_token": "<|im_end|>"}),
    "mistral": (MISTRAL, "</s>", {"bos_token": "<s>", "eos_token": "</s>"}),
    "gemma": (GEMMA, "<end_of_turn>", {"bos_token": "<bos>", "eos_token": "<end_of_turn>"}),
}
SPECIALS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|im_start|>",
            "<|im_end|>", "<s>", "</s>", "[INST]", "[/INST]", "<bos>", "<start_of_turn>", "<end_of_turn>")
CONVERSATION = [{"role": "system", "content": "you answer briefly ."},
                {"role": "user", "content": "what is the capital of norway ?"},
                {"role": "assistant", "content": "Oslo, since 1814."},
                {"role": "user", "content": "and of sweden ?"},
                {"role": "assistant", "content": "Stockholm."}]
TEXT = ["what is the capital of norway and of sweden ? Oslo, since 1814. Stockholm. you answer briefly ."] * 20


def hub_tokenizer(name: str):
    template, _, roles = HUB[name]
    tokenizer = byte_bpe(TEXT, SPECIALS, **roles)
    tokenizer.chat_template = template
    return tokenizer


def labelled_runs(tokenizer, messages) -> list[str]:
    """The text of each maximal run of tokens that carry loss, whitespace removed."""
    (row,) = assistant_only_examples(tokenizer, [messages])
    runs, current = [], []
    for token, label in zip(row["input_ids"], row["labels"]):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    return ["".join(tokenizer.decode(run).split()) for run in runs]


@pytest.mark.parametrize("name", sorted(HUB))
def test_each_reply_and_its_end_of_turn_carry_loss_on_hub_templates(name: str) -> None:
    tokenizer, end = hub_tokenizer(name), HUB[name][1]
    messages = CONVERSATION[1:] if name == "mistral" else CONVERSATION  # this Mistral form has no system turn
    assert labelled_runs(tokenizer, messages) == ["Oslo,since1814." + end, "Stockholm." + end]


def test_the_tiny_template_masks_its_replies_too() -> None:
    tokenizer = as_chat_tokenizer(word_tokenizer())
    messages = [{"role": "user", "content": "what is the city of kato ?"}, {"role": "assistant", "content": "oslo ."}]
    assert labelled_runs(tokenizer, messages) == ["oslo.<|end|>"]


def test_a_template_that_renders_prefixes_differently_is_refused() -> None:
    tokenizer = hub_tokenizer("chatml")
    tokenizer.chat_template = "{{ messages | length }} messages\n" + CHATML  # the header changes as turns are added
    with pytest.raises(UnstableChatTemplate, match="prefix-stably"):
        assistant_token_mask(tokenizer, CONVERSATION)


def test_a_template_that_rewrites_replies_is_refused() -> None:
    tokenizer = hub_tokenizer("chatml")
    tokenizer.chat_template = CHATML.replace("{{ m['content'] }}", "{{ m['content'] | upper }}")
    with pytest.raises(UnstableChatTemplate, match="rewrites assistant replies"):
        assistant_token_mask(tokenizer, CONVERSATION)
