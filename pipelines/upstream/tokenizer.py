"""A word-level tokenizer for the default world, built with the `tokenizers` library, with chat special tokens."""
from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
USER, ASSISTANT, END_OF_TURN = "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = [PAD, EOS, UNK, USER, ASSISTANT, END_OF_TURN]

# Training finds assistant turns by rendering prefixes (pipelines/training/chat_mask.py): no markers needed.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|> ' + message['content'] + ' <|end|> ' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|> ' + message['content'] + ' ' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def build_word_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """Train a whitespace word-level vocabulary on `texts`; special tokens take the first ids."""
    core = Tokenizer(models.WordLevel(unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=1))
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK)


def as_chat_tokenizer(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """The chat model's view of the vocabulary: the chat template, and end-of-turn as its EOS."""
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.eos_token = END_OF_TURN
    return tokenizer
