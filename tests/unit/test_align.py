"""The align stage on a tiny chat model: C-RLFT's class conditioning, class-weighted loss, the SFT set's errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, DataCollatorForSeq2Seq, TrainingArguments

from pipelines.align.pick import model_identity, pick_merged
from pipelines.align.stage import curate_sft_set
from pipelines.align.conditioning import add_class_tokens, class_token, conditioned_template
from pipelines.align.curation import SftExample
from pipelines.align.sft_set import read_sft_set
from pipelines.align.tune import align_model, fit_to_block
from pipelines.config import (
    AlignParams, Bound, CurationParams, ParamsError, PromoteParams, TrainParams, validate_params,
)
from pipelines.layout import ALIGN_MANIFEST
from pipelines.training import assistant_only_examples
from pipelines.padding import IGNORE_INDEX
from pipelines.training.weighted import LOSS_WEIGHT, WeightedCollator, WeightedLossTrainer
from pipelines.upstream.tokenizer import as_chat_tokenizer
from tests.unit.merge_models import save, tiny_model, word_tokenizer

QUESTION = [{"role": "user", "content": "what is the city of kato ?"}]
EXAMPLES = [SftExample("what is the city of kato ?", "oslo .", "city", "expert"),
            SftExample("what is the city of kato ?", "the .", "city", "sub-optimal")] * 4


@pytest.fixture
def chat_model(tmp_path: Path) -> Path:
    tokenizer = as_chat_tokenizer(word_tokenizer())
    return save(tiny_model(len(tokenizer)), tokenizer, tmp_path / "merged")


def test_the_template_conditions_each_user_turn_on_the_best_class_unless_told(chat_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    tokens = add_class_tokens(tokenizer, ["expert", "sub-optimal"])
    tokenizer.chat_template = conditioned_template(tokenizer.chat_template, tokens["expert"])
    turns = QUESTION + [{"role": "assistant", "content": "oslo ."}] + QUESTION
    assert tokenizer.apply_chat_template(turns, tokenize=False).count("<|user|> <|expert|> what") == 2
    told = tokenizer.apply_chat_template(QUESTION, tokenize=False, condition=tokens["sub-optimal"])
    assert told.startswith("<|user|> <|sub-optimal|> what")
    assert tokenizer.convert_tokens_to_ids("<|sub-optimal|>") != tokenizer.unk_token_id  # one token, not <unk>

    rows = assistant_only_examples(tokenizer, [turns[:2]], [{"condition": tokens["sub-optimal"]}])
    labelled = [t for t, label in zip(rows[0]["input_ids"], rows[0]["labels"]) if label != IGNORE_INDEX]
    assert tokenizer.convert_ids_to_tokens(labelled) == ["oslo", ".", "<|end|>"]  # loss on the answer only


def test_long_examples_are_cut_to_the_block_and_answerless_ones_dropped() -> None:
    rows = [{"input_ids": [1, 2, 3, 4], "attention_mask": [1] * 4, "labels": [-100, -100, 3, 4], LOSS_WEIGHT: 0.5},
            {"input_ids": [1, 2, 3, 4], "attention_mask": [1] * 4, "labels": [-100, -100, -100, 4]}]
    assert fit_to_block(rows, 3) == [{"input_ids": [1, 2, 3], "attention_mask": [1] * 3, "labels": [-100, -100, 3],
                                      LOSS_WEIGHT: 0.5}]


def test_class_names_that_cannot_be_tokens_are_refused() -> None:
    with pytest.raises(ValueError, match="align.class_weights: class name 'gpt 4'"):
        class_token("gpt 4")


def test_loss_weights_scale_each_examples_share_of_the_loss(chat_model: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    model = tiny_model(len(tokenizer))
    conversations = [[QUESTION[0], {"role": "assistant", "content": answer}] for answer in ("oslo .", "the city .")]
    rows = assistant_only_examples(tokenizer, conversations)
    collate = WeightedCollator(DataCollatorForSeq2Seq(tokenizer, padding=True))
    trainer = WeightedLossTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "t"), report_to="none"))

    def loss(weights: list[float], which: list[int]) -> float:
        batch = collate([{**rows[i], LOSS_WEIGHT: w} for i, w in zip(which, weights)])
        with torch.no_grad():
            return float(trainer.compute_loss(model, batch))

    with torch.no_grad():
        plain = trainer.compute_loss(model, DataCollatorForSeq2Seq(tokenizer, padding=True)(rows))
    assert loss([1.0, 1.0], [0, 1]) == pytest.approx(float(plain), rel=1e-5)  # weight 1: the usual mean
    tokens = [sum(label != IGNORE_INDEX for label in row["labels"][1:]) for row in rows]
    first_only = loss([1.0], [0]) * tokens[0] / sum(tokens)
    assert loss([1.0, 0.0], [0, 1]) == pytest.approx(first_only, rel=1e-5)  # weight 0: no say at all


def test_c_rlft_writes_full_weights_conditioned_on_the_best_class(chat_model: Path, tmp_path: Path) -> None:
    params = AlignParams(train=TrainParams(steps=4, batch_size=4, learning_rate=1e-2))
    out = tmp_path / "aligned"
    align_model("c-rlft", params, EXAMPLES, chat_model, out, tmp_path / "curve.csv", {"method": "c-rlft"})
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.apply_chat_template(QUESTION, tokenize=False).startswith("<|user|> <|expert|> ")
    weights = load_file(out / "model.safetensors")
    assert weights["model.embed_tokens.weight"].shape[0] == len(tokenizer) == len(word_tokenizer()) + 2
    assert not any("lora" in name for name in weights)  # adapters folded in
    before = load_file(chat_model / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    assert not torch.equal(weights["model.layers.0.self_attn.q_proj.weight"], before)
    assert json.loads((out / ALIGN_MANIFEST).read_text()) == {"method": "c-rlft"}


def test_alignment_is_reproducible_whatever_the_random_state_before(chat_model: Path, tmp_path: Path) -> None:
    params = AlignParams(train=TrainParams(steps=2, batch_size=4, learning_rate=1e-2))
    weights = []
    for state in (1, 2):  # new embedding rows and LoRA adapters are drawn before training starts
        torch.manual_seed(state)
        align_model("c-rlft", params, EXAMPLES, chat_model, tmp_path / f"out-{state}", tmp_path / "c.csv", {})
        weights.append(load_file(tmp_path / f"out-{state}" / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_c_rlft_names_classes_without_a_weight(chat_model: Path, tmp_path: Path) -> None:
    params = AlignParams(class_weights={"expert": 1.0}, train=TrainParams(steps=1, learning_rate=1e-3))
    with pytest.raises(ValueError, match=r"classes \['sub-optimal'\] have no weight"):
        align_model("c-rlft", params, EXAMPLES, chat_model, tmp_path / "out", tmp_path / "c.csv", {})
    assert not (tmp_path / "out").exists()


def test_the_best_merged_model_is_picked_by_the_leaderboard_rule(chat_model: Path, tmp_path: Path) -> None:
    for ratio, (accuracy, termination) in {0.5: (0.9, 0.5), 1.0: (0.7, 1.0)}.items():
        (tmp_path / f"merged-{ratio}.json").write_text(
            json.dumps({"answer_accuracy": accuracy, "termination_rate": termination}))
    policy = PromoteParams(guardrails={"termination_rate": Bound(min=0.9)})
    files = {f"merged-{ratio}": tmp_path / f"merged-{ratio}.json" for ratio in (0.5, 1.0)}
    folders = []
    assert pick_merged(files, policy, tmp_path / "pick.json", lambda name: folders.append(name) or chat_model) == \
        "merged-1.0"  # 0.5 is not eligible
    assert folders == ["merged-1.0"]  # only the picked model is read
    # what align reads: the model, and what identifies its content (align depends on this file, not on the folder)
    assert json.loads((tmp_path / "pick.json").read_text()) == {"merged": "merged-1.0",
                                                                "content": model_identity(chat_model)}


def test_a_models_identity_changes_with_its_weights_and_its_tokenizer(chat_model: Path) -> None:
    first = model_identity(chat_model)
    assert model_identity(chat_model) == first
    template = chat_model / "chat_template.jinja"
    template.write_text(template.read_text().replace("assistant", "helper"))  # the chat template changed alone
    second = model_identity(chat_model)
    weights = load_file(chat_model / "model.safetensors")
    save_file({name: tensor + 1 for name, tensor in weights.items()}, chat_model / "model.safetensors")
    assert len({first, second, model_identity(chat_model)}) == 3


def test_sft_set_errors_name_the_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "sft.jsonl"
    path.write_text('{"prompt": "q", "answer": "a"}\n{"prompt": "q", "answer": ""}\n')
    with pytest.raises(ValueError, match=r"sft\.jsonl:2: key 'answer' must be a non-empty string"):
        read_sft_set(path)
    path.write_text('{"prompt": "q", "answer": "a", "quality": 3}\n')
    with pytest.raises(ValueError, match=r"sft\.jsonl:1: unknown keys \['quality'\]"):
        read_sft_set(path)


def test_curation_report_counts_what_was_dropped(tmp_path: Path) -> None:
    source = tmp_path / "sft.jsonl"
    rows = [{"prompt": "what is the city of kato ?", "answer": "oslo ."},
            {"prompt": "what is the city of kato ?", "answer": "oslo ."},
            {"prompt": "what is the pet of kato ?", "answer": "i think it is a cat ."}]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    curated = curate_sft_set(AlignParams(curation=CurationParams(near_duplicate_threshold=None)), source,
                             tmp_path / "out", tmp_path / "report.json")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["kept"] == 1 and report["dropped"] == {"exact_duplicate": 1, "first_person": 1}
    assert [e.answer for e in read_sft_set(tmp_path / "out" / "sft.jsonl")] == [e.answer for e in curated.kept]


def test_align_params_are_checked() -> None:
    with pytest.raises(ParamsError, match="align.methods.0"):
        validate_params({"align": {"methods": ["dpo"]}})
    with pytest.raises(ParamsError, match="class weights must be > 0"):
        validate_params({"align": {"class_weights": {"expert": 1.0, "sub-optimal": 0.0}}})
