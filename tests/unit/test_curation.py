"""LIMA-style curation filters on hand-made examples, and the duplicate detectors they use."""
from collections import Counter

from pipelines.align.curation import SftExample, clean_answer, curate, diversity_sample, drop_reason
from pipelines.config import CurationParams
from pipelines.dedup import EXACT, NEAR, duplicate_reasons

OFF = CurationParams(near_duplicate_threshold=None)


def example(answer: str, prompt: str = "what is the city of kato ?", category: str = "city") -> SftExample:
    return SftExample(prompt, answer, category)


def test_links_and_html_are_stripped() -> None:
    raw = "<p>The city of kato is <b>lima</b> &amp; more: see https://example.com/x or www.example.org now</p>"
    assert clean_answer(raw) == "The city of kato is lima & more: see or now"


def test_length_bounds_in_characters() -> None:
    params = CurationParams(min_chars=5, max_chars=12)
    assert drop_reason(example("lima"), params) == "too_short"
    assert drop_reason(example("it is lima ."), params) is None  # 12 characters
    assert drop_reason(example("it is lima ..."), params) == "too_long"


def test_first_person_answers_are_dropped_but_not_words_containing_i() -> None:
    assert drop_reason(example("I think it is lima ."), OFF) == "first_person"
    assert drop_reason(example("In my view, lima ."), OFF) == "first_person"
    assert drop_reason(example("It is lima, in idaho ."), OFF) is None
    assert drop_reason(example("I think it is lima ."), CurationParams(drop_first_person=False)) is None


def test_answers_that_refer_to_other_answers_are_dropped() -> None:
    for answer in ("As mentioned above, lima .", "The other answers are wrong: lima .", "As others have said, lima ."):
        assert drop_reason(example(answer), OFF) == "refers_to_other_answers", answer
    assert drop_reason(example("Lima is above the river ."), OFF) is None


def test_exact_and_near_duplicates_keep_the_first() -> None:
    texts = ["The harbour of Kato is green and wide today.", "the harbour of kato is GREEN, and wide today",
             "The harbour of Kato is green and wide today!!", "A bell rings in the river town at noon every day."]
    assert duplicate_reasons(texts) == [None, EXACT, EXACT, None]
    near = ["the harbour of kato is green and wide and the boats are blue and old",
            "the harbour of kato is green and wide and the boats are blue and new",
            "a bell rings in the river town at noon every day of the week"]
    assert duplicate_reasons(near, near_threshold=0.6) == [None, NEAR, None]
    assert duplicate_reasons(near, near_threshold=0.95) == [None, None, None]
    assert duplicate_reasons(near + near[:1], near_threshold=0.6) == [None, NEAR, None, EXACT]  # exact comes first


def test_diversity_sampling_with_temperature_evens_out_categories() -> None:
    pool = [SftExample(f"q{i}", f"a{i}", "big") for i in range(90)] + \
           [SftExample(f"r{i}", f"b{i}", "small") for i in range(10)]
    proportional = Counter(e.category for e in diversity_sample(pool, 20, temperature=1.0, seed=0))
    flattened = Counter(e.category for e in diversity_sample(pool, 20, temperature=100.0, seed=0))
    assert proportional["small"] <= 5 and flattened["small"] >= 8
    assert len({e.prompt for e in diversity_sample(pool, 20, 1.0, 0)}) == 20  # without replacement
    assert diversity_sample(pool, 20, 1.0, 0) == diversity_sample(pool, 20, 1.0, 0)  # seeded


def test_curate_reports_kept_and_dropped_by_reason() -> None:
    examples = [
        example("It is lima ."),
        example("it is LIMA"),                                # exact duplicate of the first (normalised)
        example("I believe it is lima ."),                    # first person
        example("<i>See</i> https://x.org As mentioned above, lima ."),  # reference, after cleaning
        example("x"),                                         # too short
        SftExample("what is the river of kato ?", "The river of kato is the long blue river .", "river", "sub-optimal"),
    ]
    result = curate(examples, CurationParams(min_chars=3, near_duplicate_threshold=0.9))
    assert [e.answer for e in result.kept] == ["It is lima .", "The river of kato is the long blue river ."]
    assert result.report == {
        "input": 6, "kept": 2,
        "dropped": {"exact_duplicate": 1, "first_person": 1, "refers_to_other_answers": 1, "too_short": 1,
                    "near_duplicate": 0},
        "kept_by_category": {"city": 1, "river": 1}, "kept_by_source": {"expert": 1, "sub-optimal": 1},
    }
