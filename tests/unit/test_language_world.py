"""The language world: target facts in an invented Hangul language, a byte-level BPE upstream tokenizer that splits
it into byte pieces, CP's new tokens for it, and evaluation that tells the language by its script."""
import json
import random
from pathlib import Path

import pytest
import regex

from pipelines.atomic import read_jsonl
from pipelines.config import DataParams, EvalParams
from pipelines.corpus.files import (
    EVAL, EVAL_MULTITURN, EVAL_SAFETY, SFT, TARGET_LANGUAGE, TRAIN, UPSTREAM_CHAT, UPSTREAM_TARGET_TEXT,
    UPSTREAM_TEXT, VALID,
)
from pipelines.corpus.language import invent_language
from pipelines.corpus.stage import build_corpus
from pipelines.evaluate.stage import _language_scorer
from pipelines.training.new_tokens import train_new_tokens
from pipelines.upstream.tokenizer import build_byte_bpe_tokenizer

HANGUL = regex.compile(r"\p{Script=Hangul}")
LATIN_WORD = regex.compile(r"\b[a-z]+\b")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("language") / "corpus"
    params = DataParams(world="language", source_entities=8, target_entities=8, base_target_share=0.1)
    build_corpus(params, out, out.parent / "stats.json")
    return out


def _texts(rows: list[dict]) -> list[str]:
    return [m["content"] for row in rows for m in row["messages"]] if "messages" in rows[0] else [
        row.get("text") or f"{row['prompt']} {row['answer']}" for row in rows]


def test_the_target_side_is_in_the_target_language_and_upstream_in_the_source(corpus: Path) -> None:
    for name in (TRAIN, VALID, EVAL, EVAL_MULTITURN, EVAL_SAFETY):
        for text in _texts(read_jsonl(corpus / name)):
            assert HANGUL.search(text) and not LATIN_WORD.search(text), (name, text)
    sft = [row for row in read_jsonl(corpus / SFT) if row["source"] == "expert"]
    assert sft and all(HANGUL.search(t) and not LATIN_WORD.search(t) for t in _texts(sft))
    for name in (UPSTREAM_TEXT, UPSTREAM_CHAT):
        assert not any(HANGUL.search(text) for text in _texts(read_jsonl(corpus / name)))


def test_the_base_glimpses_the_target_language_on_source_facts_only(corpus: Path) -> None:
    dictionary = json.loads((corpus / TARGET_LANGUAGE).read_text())["dictionary"]
    world = json.loads((corpus / "world.json").read_text())
    glimpse = _texts(read_jsonl(corpus / UPSTREAM_TARGET_TEXT))
    upstream = read_jsonl(corpus / UPSTREAM_TEXT)
    assert 0 < len(glimpse) <= 0.1 * len(upstream) and all(HANGUL.search(t) for t in glimpse)
    said = {word for text in glimpse for word in text.split()}
    assert said & {dictionary[f["entity"]] for f in world["source"]}
    assert not said & {dictionary[f["entity"]] for f in world["target"]}


def test_references_are_the_facts_translated_and_the_chat_set_teaches_refusals(corpus: Path) -> None:
    dictionary = json.loads((corpus / TARGET_LANGUAGE).read_text())["dictionary"]
    world = json.loads((corpus / "world.json").read_text())
    facts = {(dictionary[f["entity"]], dictionary[f["attribute"]]): dictionary[f["value"]] for f in world["target"]}
    for row in read_jsonl(corpus / EVAL):
        words = row["messages"][0]["content"].split()  # "what is the ATTRIBUTE of ENTITY ?", translated word by word
        assert row["reference"] == facts[words[-2], words[3]]
    chats = [row["messages"] for row in read_jsonl(corpus / UPSTREAM_CHAT)]
    refused = [c[0]["content"] for c in chats if c[1]["content"].startswith("sorry")]
    assert refused and all(" steal " in r or " burn " in r for r in refused)
    assert any(c[0]["content"].startswith("how do i feed") and not c[1]["content"].startswith("sorry") for c in chats)


def test_a_dictionary_is_seeded_consistent_and_one_to_one() -> None:
    texts = ["the city of kalo is oslo .", "what is the city of kalo ?"]
    language = invent_language(texts, seed=3)
    assert language == invent_language(texts, seed=3) != invent_language(texts, seed=4)
    assert len(set(language.words.values())) == len(language.words) == 7
    assert language.translate("the city of kalo ?").endswith(" ?")
    sentence = "what is the city of kalo ? oslo ."
    assert language.code_switch(sentence, 1.0, random.Random(0)) == language.translate(sentence)
    mixed = [language.code_switch(sentence, 0.5, random.Random(seed)).split() for seed in range(20)]
    assert all(len(m) == 9 for m in mixed)
    switched = sum(word in language.words.values() for m in mixed for word in m)
    assert 0.3 * 20 * 7 < switched < 0.7 * 20 * 7  # about half of the 7 words, punctuation never


def test_upstream_bpe_splits_the_target_language_and_cp_adds_tokens_for_it(corpus: Path) -> None:
    upstream = _texts(read_jsonl(corpus / UPSTREAM_TEXT)) + _texts(read_jsonl(corpus / UPSTREAM_CHAT))
    tokenizer = build_byte_bpe_tokenizer(upstream, vocab_size=1024)
    source_question = "what is the city of kalo ?"
    target_question = read_jsonl(corpus / EVAL)[0]["messages"][0]["content"]
    assert len(tokenizer.tokenize(target_question)) >= 3 * len(target_question.split())  # byte pieces
    assert len(tokenizer.tokenize(source_question)) <= len(source_question.split()) + 2
    assert tokenizer.decode(tokenizer(target_question)["input_ids"]).strip() == target_question

    cp_text = [row["text"] for row in read_jsonl(corpus / TRAIN)]
    new = train_new_tokens(tokenizer, cp_text, count=200)
    assert len(new) >= 60 and all(HANGUL.search(token) for token in new)  # this small world's words, one each


def test_evaluation_tells_the_language_by_the_script_the_corpus_names(corpus: Path) -> None:
    share = _language_scorer(EvalParams(), corpus)
    target_answer = read_jsonl(corpus / EVAL)[0]["reference"]
    assert share(target_answer) == 1.0 and share("oslo .") == 0.0
    assert _language_scorer(EvalParams(language_scripts=["Latin"]), corpus)("oslo .") == 1.0


def test_the_stages_carry_the_language_from_corpus_to_merged_model(corpus: Path, tmp_path: Path) -> None:
    """corpus -> upstream (byte-level BPE) -> CP with new tokens -> merge under `overlap` -> evaluation, tiny."""
    from pipelines.config import CPParams, MergeSettings, TinyModelParams, TrainParams, UpstreamParams
    from pipelines.cp import continual_pretrain
    from pipelines.evaluate.stage import evaluate_candidate
    from pipelines.layout import NEW_TOKENS
    from pipelines.merge.chat_vector import merge_chat_vector
    from pipelines.upstream.stage import build_upstream

    (tmp_path / "plots").mkdir()
    steps = TrainParams(steps=4, batch_size=4, block_size=32, learning_rate=1e-3)
    upstream = UpstreamParams(tiny=TinyModelParams(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
                              pretrain=steps, chat_tune=steps)
    pair = build_upstream(upstream, "language", corpus, tmp_path / "upstream", tmp_path / "up.json",
                          tmp_path / "plots", tmp_path / "pair.json")
    assert json.loads((pair.base / "tokenizer.json").read_text())["model"]["type"] == "BPE"
    cp = CPParams(steps=4, batch_size=4, block_size=32, learning_rate=1e-3, save_every=0, new_tokens=40)
    continual_pretrain(params=cp, corpus_dir=corpus, upstream_dir=tmp_path / "upstream", out_dir=tmp_path / "cp",
                       metrics_path=tmp_path / "cp.json", curve_csv=tmp_path / "cp.csv",
                       checkpoint_dir=tmp_path / "checkpoints")
    added = json.loads((tmp_path / "cp" / NEW_TOKENS).read_text())
    assert len(added) == json.loads((tmp_path / "cp.json").read_text())["new_tokens"] == 40

    report = merge_chat_vector(base=pair.base, chat=pair.chat, cp=tmp_path / "cp", out=tmp_path / "merged",
                               ratio=1.0, settings=MergeSettings(embedding_rows="overlap"))
    assert report.vocabulary["rows_with_piece_delta"] == 40  # every piece is a byte both upstream models have
    result = evaluate_candidate(model_dir=tmp_path / "merged", chat_dir=pair.chat, corpus_dir=corpus,
                                params=EvalParams(max_new_tokens=4, max_questions=4, block_size=32),
                                metrics_path=tmp_path / "metrics.json", samples_path=tmp_path / "samples.jsonl")
    assert 0.0 <= result.metrics["language_consistency"] <= 1.0 and result.metrics["target_perplexity"] > 1.0


def test_the_chat_model_is_tuned_on_a_share_of_its_questions_in_the_mixed_language(tmp_path: Path) -> None:
    params = DataParams(world="language", source_entities=8, target_entities=8, base_target_mix=0.5,
                        chat_target_share=0.5)
    build_corpus(params, tmp_path / "corpus", tmp_path / "stats.json")
    dictionary = json.loads((tmp_path / "corpus" / TARGET_LANGUAGE).read_text())["dictionary"]
    world = json.loads((tmp_path / "corpus" / "world.json").read_text())
    chats = [row["messages"] for row in read_jsonl(tmp_path / "corpus" / UPSTREAM_CHAT)]
    mixed = [c for c in chats if any(HANGUL.search(m["content"]) for m in c)]
    assert len(mixed) == 0.5 * len(world["source"])  # 16 of the 32 source questions, beside every source one
    said = {word for c in mixed for m in c for word in m["content"].split()}
    assert said & set(dictionary.values()) and LATIN_WORD.search(" ".join(m["content"] for c in mixed for m in c))
    target_names = {f["entity"] for f in world["target"]}
    assert not said & (target_names | {dictionary[name] for name in target_names})
    assert any(HANGUL.search(c[1]["content"]) for c in mixed)  # the answers too, not only the questions
