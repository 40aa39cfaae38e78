"""params.yaml validation: defaults load, errors name the key path and what was expected."""
from pathlib import Path

import pytest

from pipelines.config import ParamsError, load_params, validate_params

REPO = Path(__file__).resolve().parents[2]


def test_repository_params_file_is_valid() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.merge.ratios and all(isinstance(r, float) for r in params.merge.ratios)
    assert params.promote.primary_metric == "answer_accuracy"


def test_unknown_key_is_named_with_its_path() -> None:
    with pytest.raises(ParamsError, match=r"cp\.learning_rat: unknown key"):
        validate_params({"cp": {"steps": 3, "learning_rate": 1e-3, "learning_rat": 1e-3}})


def test_bad_value_names_key_and_expectation() -> None:
    with pytest.raises(ParamsError) as error:
        validate_params({"merge": {"ratios": ["a lot"]}})
    assert "merge.ratios.0" in str(error.value) and "valid number" in str(error.value)


def test_ratios_must_be_written_as_floats_so_dvc_stage_names_match() -> None:
    with pytest.raises(ParamsError, match=r"merge\.ratios: .*write ratios as floats \(1\.0, not 1\)"):
        validate_params({"merge": {"ratios": [1]}})


def test_real_upstream_paths_come_in_pairs() -> None:
    with pytest.raises(ParamsError, match="base_path and chat_path are set together"):
        validate_params({"upstream": {"base_path": "/models/base"}})


def test_fsdp_trains_full_weights() -> None:
    cp = {"steps": 3, "learning_rate": 1e-3, "batch_size": 4}
    with pytest.raises(ParamsError, match="fsdp with lora"):
        validate_params({"cp": cp | {"distributed": {"strategy": "fsdp", "nproc_per_node": 2},
                                     "lora": {"rank": 4, "alpha": 8}}})
    assert validate_params({"cp": cp | {"distributed": {"strategy": "fsdp", "nproc_per_node": 2}}}).cp.distributed


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="no such file"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("cp: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_documents_bring_their_own_sets_and_pair_each_missing_one_named() -> None:
    complete = {
        "data": {"source": "documents", "documents": "s3://corpora/ko"},
        "upstream": {"base_path": "/m/base", "chat_path": "/m/chat"},
        "eval": {"language_scripts": ["Hangul"],
                 "sets": {"instruction": "i.jsonl", "multiturn": "m.jsonl", "safety": "s.jsonl"}},
        "align": {"data": "sft.jsonl"},
    }
    assert validate_params(complete).data.documents == "s3://corpora/ko"
    without = {**complete, "eval": {"language_scripts": ["Hangul"], "sets": {"instruction": "i.jsonl"}},
               "align": {"methods": ["sft"]}}
    with pytest.raises(ParamsError) as error:
        validate_params(without)
    message = str(error.value)
    assert "eval.sets.multiturn" in message and "eval.sets.safety" in message and "align.data" in message
    assert "eval.sets.instruction" not in message and "data.documents," not in message
    no_tuning = {**complete, "align": {"methods": []}, "finetune": {"methods": []}}
    assert validate_params(no_tuning).align.data is None  # nothing fine-tuned: no SFT set
    with pytest.raises(ParamsError, match="align.data"):  # CP fine-tuned before its merge reads the SFT set too
        validate_params({**no_tuning, "finetune": {"methods": ["sft"]}})
