"""Batched greedy generation with the chat template, left padding and KV cache, stopping on end-of-turn ids."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Generation:
    """One answer: its text, its token ids (without the stop token) and whether a stop token ended it."""

    text: str
    token_ids: list[int]
    terminated: bool


def chat_prompt(tokenizer: PreTrainedTokenizerBase, conversation: list[dict[str, str]]) -> str:
    """The text a conversation is answered from: the chat template, ending with the assistant's turn opened."""
    return tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)


def cut_at_stop(ids: list[int], stop_ids: set[int], pad_id: int | None) -> tuple[list[int], bool]:
    """The answer's ids up to the first stop id, and whether one was found (an answer none ended loses its pads)."""
    for position, token in enumerate(ids):
        if token in stop_ids:
            return ids[:position], True
    return [t for t in ids if t != pad_id], False


def decoded_answer(tokenizer: PreTrainedTokenizerBase, ids: list[int], terminated: bool) -> Generation:
    """The answer of `ids` (the stop id cut off), its text decoded as every engine decodes it."""
    return Generation(tokenizer.decode(ids, skip_special_tokens=True).strip(), ids, terminated)


@torch.inference_mode()
def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, str]]],
    stop_ids: list[int],
    max_new_tokens: int,
    batch_size: int,
) -> list[Generation]:
    """Answer each conversation's last user turn greedily; deterministic for a given model."""
    tokenizer.padding_side = "left"
    model.eval()
    answers: list[Generation] = []
    for start in tqdm(range(0, len(conversations), batch_size), desc="generate", unit="batch"):
        batch = conversations[start : start + batch_size]
        prompts = [chat_prompt(tokenizer, conversation) for conversation in batch]
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        output = model.generate(
            **encoded, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_ids,
            pad_token_id=tokenizer.pad_token_id,
        )
        for row in output[:, encoded["input_ids"].shape[1] :].tolist():
            ids, terminated = cut_at_stop(row, set(stop_ids), tokenizer.pad_token_id)
            answers.append(decoded_answer(tokenizer, ids, terminated))
    return answers
