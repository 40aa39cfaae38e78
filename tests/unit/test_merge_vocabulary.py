"""Vocabulary cases of the merge: rows matched by token string (extended, reordered, chat tokens CP lacks, tied)."""
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from pipelines.upstream.tokenizer import as_chat_tokenizer
from tests.unit.merge_models import (
    VOCAB_MATRICES, WORDS, make_trio, merge, perturbed, reference, save, tiny_model, weights, word_tokenizer,
)

EMBED = "model.embed_tokens.weight"


def _cp_with_vocabulary(trio: dict[str, Path], texts: list[str], seed: int = 2) -> dict[str, int]:
    """Replace the trio's CP by base + noise under a new tokenizer; rows follow the tokens; return its vocab."""
    base_tokenizer = AutoTokenizer.from_pretrained(trio["base"])
    base_vocab = base_tokenizer.get_vocab()
    tokenizer = word_tokenizer(texts)
    base = AutoModelForCausalLM.from_pretrained(trio["base"])
    model = perturbed(tiny_model(len(tokenizer), seed=seed), seed)
    state = perturbed(base, seed).state_dict()
    for name in VOCAB_MATRICES:  # shared tokens carry their (noisy) base rows to their new ids
        rows = model.state_dict()[name]
        for token, new_id in tokenizer.get_vocab().items():
            if token in base_vocab:
                rows[new_id] = state[name][base_vocab[token]]
        state[name] = rows
    model.load_state_dict(state)
    save(model, tokenizer, trio["cp"])
    return tokenizer.get_vocab()


def _assert_rows_by_token(trio: dict[str, Path], merged_dir: Path, ratio: float = 0.7) -> None:
    vocab = {role: AutoTokenizer.from_pretrained(trio[role]).get_vocab() for role in ("base", "chat", "cp")}
    base, chat, cp, merged = (weights(p) for p in (trio["base"], trio["chat"], trio["cp"], merged_dir))
    for name in VOCAB_MATRICES:
        for token, row in vocab["cp"].items():
            if token in vocab["base"]:
                expected = reference(cp[name][row], [(ratio, chat[name][vocab["chat"][token]],
                                                      base[name][vocab["base"][token]])])
            else:
                expected = cp[name][row]  # new CP tokens keep CP's rows
            assert torch.equal(merged[name][row], expected), (name, token)


def test_extended_cp_vocabulary_matches_rows_by_token(tmp_path: Path) -> None:
    trio = make_trio(tmp_path)
    cp_vocab = _cp_with_vocabulary(trio, WORDS + ["the city of seoul is busan ."])
    assert len(cp_vocab) > len(AutoTokenizer.from_pretrained(trio["base"]))
    report = merge(trio, tmp_path / "merged")
    _assert_rows_by_token(trio, tmp_path / "merged")
    assert weights(tmp_path / "merged")[EMBED].shape[0] == len(cp_vocab)
    assert report.vocabulary["rows_from_cp"] == len(cp_vocab)
    embed = next(t for t in report.tensors if t.name == EMBED)
    assert embed.rows_with_delta == len(AutoTokenizer.from_pretrained(trio["base"]))


def test_reordered_cp_vocabulary_matches_rows_by_token(tmp_path: Path) -> None:
    trio = make_trio(tmp_path)
    reordered = ["oslo oslo oslo kato kato ? ? is", "what the city of"] + WORDS
    cp_vocab = _cp_with_vocabulary(trio, reordered)
    base_vocab = AutoTokenizer.from_pretrained(trio["base"]).get_vocab()
    assert cp_vocab.keys() == base_vocab.keys() and cp_vocab != base_vocab
    merge(trio, tmp_path / "merged")
    _assert_rows_by_token(trio, tmp_path / "merged")


def test_chat_tokens_missing_from_cp_are_added_with_chat_rows(tmp_path: Path) -> None:
    trio = make_trio(tmp_path)
    chat_tokenizer = as_chat_tokenizer(AutoTokenizer.from_pretrained(trio["base"]))
    chat_tokenizer.add_tokens(["<|eot|>"], special_tokens=True)
    chat_tokenizer.eos_token = "<|eot|>"
    chat = AutoModelForCausalLM.from_pretrained(trio["chat"])
    chat.resize_token_embeddings(len(chat_tokenizer))
    chat.generation_config = GenerationConfig(eos_token_id=chat_tokenizer.convert_tokens_to_ids("<|eot|>"))
    save(chat, chat_tokenizer, trio["chat"])
    cp_vocab = _cp_with_vocabulary(trio, ["kato oslo ? is", "city"] + WORDS)  # reordered: ids differ from chat's

    merge(trio, tmp_path / "merged")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    eot = tokenizer.convert_tokens_to_ids("<|eot|>")
    assert tokenizer.eos_token == "<|eot|>" and eot == len(cp_vocab)
    merged, chat_weights = weights(tmp_path / "merged"), weights(trio["chat"])
    for name in VOCAB_MATRICES:
        assert torch.equal(merged[name][eot], chat_weights[name][chat_tokenizer.convert_tokens_to_ids("<|eot|>")])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert model.config.vocab_size == len(tokenizer) == eot + 1
    assert model.generation_config.eos_token_id == eot
    _assert_rows_by_token(trio, tmp_path / "merged")


def test_tied_embeddings(tmp_path: Path) -> None:
    trio = make_trio(tmp_path, tie=True)
    assert "lm_head.weight" not in weights(trio["cp"])
    merge(trio, tmp_path / "merged")
    base, chat, cp, merged = (weights(p) for p in (trio["base"], trio["chat"], trio["cp"], tmp_path / "merged"))
    assert merged.keys() == cp.keys()
    assert all(torch.equal(merged[n], reference(cp[n], [(0.7, chat[n], base[n])])) for n in cp)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert model.config.tie_word_embeddings and torch.equal(model.lm_head.weight, merged[EMBED])


def test_tokens_cp_added_get_the_mean_delta_of_their_pieces(tmp_path: Path) -> None:
    import json

    from pipelines.layout import NEW_TOKENS
    from pipelines.training.new_tokens import extend_vocabulary

    trio = make_trio(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(trio["cp"])
    model = AutoModelForCausalLM.from_pretrained(trio["cp"])
    mapping = extend_vocabulary(model, tokenizer, ["kato oslo"])  # a word-level "piece" pair: kato + oslo
    save(model, tokenizer, trio["cp"])
    (trio["cp"] / NEW_TOKENS).write_text(json.dumps(mapping))
    new_id, pieces = mapping["kato oslo"]["id"], mapping["kato oslo"]["pieces"]

    for policy, gets_delta in (("overlap", True), ("specials", False)):
        out = tmp_path / f"merged-{policy}"
        merge(trio, out, ratio=0.7, embedding_rows=policy)
        base, chat, cp, merged = (weights(p) for p in (trio["base"], trio["chat"], trio["cp"], out))
        for name in VOCAB_MATRICES:
            delta = (chat[name][pieces].float() - base[name][pieces].float()).mean(dim=0)
            expected = cp[name][new_id] + (0.7 * delta if gets_delta else 0)
            assert torch.allclose(merged[name][new_id], expected, atol=1e-6), (policy, name)
        report = json.loads((out / "merge_report.json").read_text())
        assert report["vocabulary"]["rows_with_piece_delta"] == int(gets_delta)
