"""Each evaluation suite's metric on hand-made answers with known scores, and the eval-set schema."""
import json
from pathlib import Path

import pytest
import torch

from flows.leaderboard_view import leaderboard_markdown, metric_columns
from pipelines.leaderboard import Leaderboard, LeaderboardRow
from pipelines.config import EvalParams
from pipelines.evaluate.stage import suite_metrics
from pipelines.evaluate.degeneration import distinct_n, termination_rate
from pipelines.evaluate.generation import Generation
from pipelines.evaluate.instruction import contains, exact_match, token_f1
from pipelines.evaluate.language import language_consistency, lexicon_share, script_pattern, script_share
from pipelines.evaluate.safety import DEFAULT_REFUSAL_PATTERNS, is_refusal, refusal_matcher, safety_rates
from pipelines.evaluate.sets import load_eval_set


def test_instruction_scores() -> None:
    assert exact_match("Oslo.", "oslo") and not exact_match("it is oslo .", "oslo")
    assert contains("it is oslo .", "oslo") and not contains("it is oslo .", "is it")
    assert token_f1("it is oslo .", "oslo") == pytest.approx(0.5)  # precision 1/3, recall 1
    assert token_f1("rome", "oslo") == 0.0 and token_f1("Oslo", "oslo .") == 1.0


def test_termination_and_distinct_n() -> None:
    assert termination_rate([True, False, True, True]) == 0.75
    assert distinct_n([[1, 2, 3], [1, 2, 4]], 2) == 0.75  # (1,2) twice, (2,3), (2,4)
    assert distinct_n([[1], [2]], 2) == 0.0


def test_language_by_script_and_by_lexicon() -> None:
    hangul = script_pattern(["Hangul"])
    assert script_share("안녕 hello!", hangul) == pytest.approx(2 / 7)
    assert script_share("123 ?", hangul) is None
    with pytest.raises(ValueError, match="unknown Unicode script 'Klingonish'"):
        script_pattern(["Klingonish"])
    assert lexicon_share("Oslo is far.", {"oslo", "is"}) == pytest.approx(2 / 3)
    assert language_consistency([1.0, None, 0.5]) == 0.75


def test_refusals_and_false_refusals() -> None:
    matcher = refusal_matcher(DEFAULT_REFUSAL_PATTERNS)
    assert is_refusal("I'm sorry, I can't help with that.", matcher)
    assert is_refusal("I cannot do that", matcher) and not is_refusal("Sure: feed it twice a day.", matcher)
    assert safety_rates([True, False, True, False], [True, True, False, False]) == {
        "refusal_rate": 0.5, "false_refusal_rate": 0.5}
    with pytest.raises(ValueError, match=r"refusal pattern '\(unclosed'"):
        refusal_matcher(["(unclosed"])


def test_suite_metrics_from_samples() -> None:
    def generation(text: str, ids: list[int], terminated: bool = True) -> Generation:
        return Generation(text, ids, terminated)

    answers = {"instruction": [generation("oslo .", [5, 1]), generation("rome rome rome", [6, 6, 6, 6], False)],
               "multiturn": [generation("red .", [7, 1])], "safety": [generation("sorry", [9]), generation("ok", [8])]}
    samples = [
        {"suite": "instruction", "correct": True, "exact_match": True, "token_f1": 1.0, "terminated": True,
         "repetition": 0.0, "language": 1.0},
        {"suite": "instruction", "correct": False, "exact_match": False, "token_f1": 0.0, "terminated": False,
         "repetition": 2 / 3, "language": 0.0},
        {"suite": "multiturn", "correct": True, "terminated": True, "repetition": 0.0, "language": None},
        {"suite": "safety", "harmful": True, "refused": True, "terminated": True, "repetition": 0.0},
        {"suite": "safety", "harmful": False, "refused": True, "terminated": True, "repetition": 0.0},
    ]
    metrics = suite_metrics(samples, answers, EvalParams())
    assert metrics == pytest.approx({
        "answer_accuracy": 0.5, "exact_match": 0.5, "token_f1": 0.5, "termination_rate": 0.5,
        "repetition_rate": 1 / 3, "distinct_2": 2 / 4, "language_consistency": 0.5, "multiturn_accuracy": 1.0,
        "refusal_rate": 1.0, "false_refusal_rate": 1.0,
    })


def test_eval_set_errors_name_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    good = {"messages": [{"role": "user", "content": "what is the city of kato ?"}], "reference": "oslo"}
    ends_with_assistant = {"messages": [{"role": "assistant", "content": "hi"}], "reference": "x"}
    path.write_text("\n".join(json.dumps(row) for row in (good, ends_with_assistant)) + "\n")
    with pytest.raises(ValueError, match=r"set\.jsonl:2: messages: .*the last message must be the user's"):
        load_eval_set(path, "reference")
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "referense": "y"}) + "\n")
    with pytest.raises(ValueError, match=r"set\.jsonl:2: referense: Extra inputs are not permitted"):
        load_eval_set(path, "reference")
    path.write_text(json.dumps(good) + "\n")
    with pytest.raises(ValueError, match=r"set\.jsonl:1: harmful: required in this set"):
        load_eval_set(path, "harmful")
    assert load_eval_set(path, "reference")[0].conversation() == good["messages"]


def test_leaderboard_shows_every_metric() -> None:
    board = Leaderboard(winner="merged-1.0", primary_metric="token_f1", reason="r", rows=[
        LeaderboardRow("merged-1.0", 1, "candidate", True, [],
                       {"token_f1": 0.5, "answer_accuracy": 0.4, "refusal_rate": 0.25}),
        LeaderboardRow("cp", 2, "reference", False, ["x"], {"token_f1": 0.1, "multiturn_accuracy": 0.0})])
    assert metric_columns(board) == ["token_f1", "answer_accuracy", "multiturn_accuracy", "refusal_rate"]
    table = leaderboard_markdown(board)
    assert "| 1 | merged-1.0 | 0.500 | 0.400 | - | 0.250 | met |" in table


def _constant_classifier(path: Path) -> Path:
    """A tiny sequence classifier with a zero output layer: equal logits, so label 0 ("refusal") for every text."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from pipelines.upstream.tokenizer import build_word_tokenizer

    tokenizer = build_word_tokenizer(["i can not help with that", "feed it daily"])
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=2, pad_token_id=tokenizer.pad_token_id,
                         id2label={0: "refusal", 1: "compliance"}, label2id={"refusal": 0, "compliance": 1})
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        model.score.weight.zero_()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_refusal_classifier_by_local_path(tmp_path: Path) -> None:
    from pipelines.evaluate.safety import classifier_refusals

    answers = ["i can not help with that", "feed it daily", "unknown words here"]
    classifier = _constant_classifier(tmp_path / "classifier")
    assert classifier_refusals(classifier, answers, "refusal", batch_size=2, device=torch.device("cpu")) == [True, True, True]
    assert classifier_refusals(classifier, answers, "compliance", batch_size=2, device=torch.device("cpu")) == [False, False, False]
    with pytest.raises(ValueError, match=r"no label 'refuse' \(its labels: \['compliance', 'refusal'\]\)"):
        classifier_refusals(classifier, answers, "refuse", batch_size=2, device=torch.device("cpu"))
