"""The generated worlds' tokenizers, built with the `tokenizers` library, with chat special tokens: word-level for
the domain world, byte-level BPE (as hub models have) for the language world."""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
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


def build_byte_bpe_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE vocabulary of `vocab_size` on `texts`: every byte is a token, so text in a script
    `texts` never show is still encoded, one piece a byte; special tokens take the first ids."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK)


def as_chat_tokenizer(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """The chat model's view of the vocabulary: the chat template, and end-of-turn as its EOS."""
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.eos_token = END_OF_TURN
    return tokenizer
