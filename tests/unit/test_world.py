"""Data expectations on the default world: seeded, disjoint worlds, references that match the facts."""
import json
from pathlib import Path

from pipelines.atomic import read_jsonl
from pipelines.config import DataParams
from pipelines.corpus.files import EVAL, SFT, TRAIN, UPSTREAM_CHAT, UPSTREAM_TEXT, VALID
from pipelines.corpus.stage import build_corpus
from pipelines.corpus.world import build_world


def test_same_seed_same_world_other_seed_other_world() -> None:
    assert build_world(3, 10, 10, 8) == build_world(3, 10, 10, 8)
    assert build_world(3, 10, 10, 8) != build_world(4, 10, 10, 8)


def test_corpus_keeps_target_facts_out_of_upstream_data(tmp_path: Path) -> None:
    params = DataParams(source_entities=6, target_entities=5, pretrain_repeats=2, cp_repeats=2)
    build_corpus(params, tmp_path / "corpus", tmp_path / "stats.json")
    world = json.loads((tmp_path / "corpus" / "world.json").read_text())
    target_names = {fact["entity"] for fact in world["target"]}
    source_names = {fact["entity"] for fact in world["source"]}
    assert len(target_names) == 5 and len(source_names) == 6 and not target_names & source_names

    upstream_text = " ".join(r["text"] for r in read_jsonl(tmp_path / "corpus" / UPSTREAM_TEXT))
    for fact in world["target"]:  # the base may know the names, never the target facts
        assert f"the {fact['attribute']} of {fact['entity']} is" not in upstream_text
    chat = json.dumps(read_jsonl(tmp_path / "corpus" / UPSTREAM_CHAT))
    assert not any(name in chat for name in target_names)

    cp_text = " ".join(r["text"] for r in read_jsonl(tmp_path / "corpus" / TRAIN))
    assert all(f"the {f['attribute']} of {f['entity']} is {f['value']}" in cp_text for f in world["target"])
    assert "<|" not in cp_text  # CP data is plain text, no chat format

    facts = {(f["entity"], f["attribute"]): f["value"] for f in world["target"]}
    sft_names = {row["prompt"].split()[-2] for row in read_jsonl(tmp_path / "corpus" / SFT)}
    assert len(sft_names) == 1  # round(0.25 * 5) entities for the align SFT set
    questions = read_jsonl(tmp_path / "corpus" / EVAL)
    assert len(questions) == 4 * len(target_names - sft_names)
    for row in questions:
        attribute, entity = row["tags"][1], row["messages"][0]["content"].split()[-2]
        assert row["reference"] == facts[(entity, attribute)] and entity not in sft_names
    heldout = [row["text"] for row in read_jsonl(tmp_path / "corpus" / VALID)]  # the eval facts, asked and answered
    assert heldout == [f"what is the {a} of {e} ? {facts[(e, a)]} ." for e, a in facts if e not in sft_names]
    assert json.loads((tmp_path / "stats.json").read_text())["records"]["eval"] == len(questions)


def test_sft_set_mixes_expert_and_sub_optimal_answers_on_entities_no_eval_set_asks(tmp_path: Path) -> None:
    from pipelines.corpus.files import EVAL_MULTITURN, EVAL_SAFETY, LM_EVAL
    from pipelines.corpus.world import NOISY_ANSWERS

    build_corpus(DataParams(source_entities=4, target_entities=40, sft_share=0.5, sft_expert_share=0.4),
                 tmp_path / "corpus", tmp_path / "stats.json")
    world = json.loads((tmp_path / "corpus" / "world.json").read_text())
    facts = {f"what is the {f['attribute']} of {f['entity']} ?": f["value"] for f in world["target"]}
    rows = read_jsonl(tmp_path / "corpus" / SFT)
    sft_names = {row["prompt"].split()[-2] for row in rows}
    assert len(sft_names) == 20 and len(rows) == 80 + 8  # one answer per fact, a tenth repeated
    noisy = [template.split("{value}")[0] for template in NOISY_ANSWERS]
    by_source = {"expert": 0, "sub-optimal": 0}
    for row in rows:
        by_source[row["source"]] += 1
        right = row["answer"] == f"{facts[row['prompt']]} ."
        assert right if row["source"] == "expert" else not right
        if row["source"] == "sub-optimal" and facts[row["prompt"]] in row["answer"]:  # right value, noisy answer
            assert any(row["answer"].startswith(start) for start in noisy if start) or "http" in row["answer"]
    assert 0.25 < by_source["expert"] / len(rows) < 0.55
    asked = "".join((tmp_path / "corpus" / name).read_text() for name in (EVAL, EVAL_MULTITURN, EVAL_SAFETY))
    asked += (tmp_path / "corpus" / LM_EVAL / "target_facts.jsonl").read_text()
    assert not any(f" {name} " in asked for name in sft_names)


def test_corpus_writes_multiturn_safety_and_language_sets(tmp_path: Path) -> None:
    from pipelines.corpus.files import EVAL_MULTITURN, EVAL_SAFETY, TARGET_LANGUAGE
    from pipelines.evaluate.sets import load_eval_set

    build_corpus(DataParams(source_entities=4, target_entities=5, sft_share=0.0), tmp_path / "corpus",
                 tmp_path / "stats.json")
    world = json.loads((tmp_path / "corpus" / "world.json").read_text())
    facts = {(f["entity"], f["attribute"]): f["value"] for f in world["target"]}
    follow_ups = load_eval_set(tmp_path / "corpus" / EVAL_MULTITURN, "reference")
    assert len(follow_ups) == 5
    for example in follow_ups:
        first, _, second = (turn.content for turn in example.messages)
        entity = first.split(" of ")[1].removesuffix(" ?")
        attribute = second.removeprefix("and the ").removesuffix(" ?")
        assert entity not in second and example.reference == facts[(entity, attribute)]  # needs the first turn
    safety = load_eval_set(tmp_path / "corpus" / EVAL_SAFETY, "harmful")
    assert sum(e.harmful for e in safety) == sum(not e.harmful for e in safety) == 10
    lexicon = set(json.loads((tmp_path / "corpus" / TARGET_LANGUAGE).read_text())["lexicon"])
    assert {f["entity"] for f in world["target"]} <= lexicon
    assert not {f["entity"] for f in world["source"]} & lexicon
