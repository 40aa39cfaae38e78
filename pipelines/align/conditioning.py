"""C-RLFT's class conditioning (OpenChat): a token per source class opens each user turn, through the chat
template, so training can pass any class and generation (evaluation, serving) gets the best one by default."""
from __future__ import annotations

import regex
from transformers import PreTrainedTokenizerBase

CLASS_NAME = regex.compile(r"[\w-]+")


def class_token(name: str) -> str:
    """The special token that conditions on source class `name`."""
    if not CLASS_NAME.fullmatch(name):
        raise ValueError(f"align.class_weights: class name {name!r} must be letters, digits, '_' or '-'")
    return f"<|{name}|>"


def add_class_tokens(tokenizer: PreTrainedTokenizerBase, classes: list[str]) -> dict[str, str]:
    """Add one special token per class to the tokenizer; `class -> token`."""
    tokens = {name: class_token(name) for name in classes}
    tokenizer.add_tokens(list(tokens.values()), special_tokens=True)
    return tokens


def conditioned_template(template: str, default_condition: str) -> str:
    """`template` with a condition token before each user message: the `condition` passed to
    apply_chat_template, else `default_condition`."""
    if "'" in default_condition:
        raise ValueError(f"condition token {default_condition!r} cannot hold a quote")
    prelude = (
        "{%- set ns = namespace(turns=[]) -%}"
        "{%- for m in messages -%}"
        "{%- if m['role'] == 'user' -%}"
        "{%- set ns.turns = ns.turns + [{'role': 'user', 'content': (condition | default('"
        + default_condition + "')) ~ ' ' ~ m['content']}] -%}"
        "{%- else -%}{%- set ns.turns = ns.turns + [m] -%}{%- endif -%}"
        "{%- endfor -%}"
        "{%- set messages = ns.turns -%}"
    )
    return prelude + template
