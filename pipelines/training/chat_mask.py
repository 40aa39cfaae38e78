"""Which tokens of a conversation are the assistant's, found by rendering its prefixes with the model's own chat
template: no `{% generation %}` markers needed, so hub templates (Llama 3, ChatML, Mistral, Gemma) work as they are.

Turn i of the assistant is what the template adds between rendering the conversation up to the user's turn with
the generation prompt and rendering it through the reply. Loss goes to the reply and the end-of-turn token that
closes it (the first special token after the reply), not to the role header or what follows end of turn.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase


class UnstableChatTemplate(ValueError):
    """Rendering a conversation's prefixes does not give prefixes of the whole: turns cannot be located."""


@dataclass(frozen=True)
class ReplySpan:
    """Character offsets, in the rendered conversation, of one assistant turn."""

    start: int  # just after the generation prompt
    reply_end: int  # just after the reply's text
    turn_end: int  # just after everything the template writes for the turn


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], prompt: bool,
            extra: dict[str, Any]) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt, **extra)


def reply_spans(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
                extra: dict[str, Any] | None = None) -> tuple[str, list[ReplySpan]]:
    """The rendered conversation and where each assistant turn lies in it; UnstableChatTemplate when a prefix
    renders differently inside the whole conversation (e.g. a template that drops earlier turns' reasoning)."""
    extra = extra or {}
    whole = _render(tokenizer, messages, False, extra)
    spans = []
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:turn], True, extra)
        through = _render(tokenizer, messages[: turn + 1], False, extra)
        if not (through.startswith(prompt) and whole.startswith(through)):
            raise UnstableChatTemplate(
                f"the chat template does not render conversations prefix-stably (message {turn}: the text before "
                "the reply, or the conversation through it, is not a prefix of the whole), so the assistant's "
                "tokens cannot be located for an assistant-only loss; use a template that renders earlier turns "
                "the same whatever follows them")
        reply = message["content"].strip()  # templates often trim replies
        at = through.find(reply, len(prompt))
        if at < 0:
            raise UnstableChatTemplate(f"the chat template rewrites assistant replies (message {turn}'s text is not "
                                       "in its rendering), so its tokens cannot be located for the loss")
        spans.append(ReplySpan(len(prompt), at + len(reply), len(through)))
    return whole, spans


def assistant_token_mask(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
                         extra: dict[str, Any] | None = None) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and, for each, whether it is part of an assistant reply or the
    end-of-turn token closing one (the first special token after the reply; without one, the next token)."""
    if not tokenizer.is_fast:
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer: character offsets are needed to find "
                         "the assistant's tokens")
    text, spans = reply_spans(tokenizer, messages, extra)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoded["input_ids"]), encoded["offset_mapping"]
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    mask = [False] * len(ids)
    for span in spans:
        after = [k for k, (begin, _) in enumerate(offsets) if span.reply_end <= begin < span.turn_end]
        closing = next((k for k in after if ids[k] in special), after[0] if after else None)
        for k, (begin, end) in enumerate(offsets):
            mask[k] |= begin < span.reply_end and end > span.start or k == closing
    return ids, mask
