"""A run as a user brings it: a hub-format base/chat pair, a corpus of documents, evaluation and SFT sets of their own.

The pair has what hub checkpoints have and the default world's lacks: a byte-level BPE tokenizer trained with
`tokenizers`, a ChatML template without `{% generation %}` markers, tokens only in chat, two end-of-turn ids in
`generation_config.json`, sharded bf16 safetensors, untied embeddings (tied ones: test_tied_hub_pair_merges). The
whole flow runs on it with real DVC (the documents imported with `dvc import-url`), MLflow and Prefect.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from mlflow import MlflowClient
from prefect.testing.utilities import prefect_test_harness
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from flows.dvc_project import DvcProject
from flows.fair_comparison import evaluation_fingerprint
from flows.retrain import retrain
from flows.tracking.store import embedded_uri
from pipelines.atomic import read_jsonl
from pipelines.config import validate_params
from pipelines.leaderboard import Leaderboard
from pipelines.upstream.pair_check import check_pair
from tests.conftest import ONE_BRANCH_PARAMS, ask_served_model, make_project
from tests.unit.merge_models import byte_bpe, merge, perturbed, save, tiny_model
from tests.unit.test_chat_mask import CHATML

pytestmark = pytest.mark.integration
MODEL = "hub-world-chat"
CITIES = ["oslo", "lima", "cairo", "quito", "hanoi", "dakar", "perth", "riga", "sofia", "tunis", "accra", "minsk"]
NAMES = ["kato", "vela", "moru", "tane", "sile", "bako", "ruma", "peli", "doro", "naki", "lusa", "fero"]
FACTS = [f"the city of {name} is {city} ." for name, city in zip(NAMES, CITIES)]
SHARD = "10KB"  # several shards even for a tiny model


def hub_pair(root: Path, tie: bool = False) -> dict[str, Path]:
    """base and chat in hub format; chat adds the ChatML tokens, a template and end-of-turn ids [<|im_end|>, <eos>]."""
    base_tokenizer = byte_bpe(FACTS * 4 + [f"what is the city of {name} ?" for name in NAMES] * 4, vocab_size=320)
    base = tiny_model(len(base_tokenizer), tie=tie).to(torch.bfloat16)
    save(base, base_tokenizer, root / "base", max_shard_size=SHARD)
    chat_tokenizer = AutoTokenizer.from_pretrained(root / "base")
    chat_tokenizer.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    chat_tokenizer.chat_template = CHATML
    chat = perturbed(tiny_model(len(chat_tokenizer), tie=tie), 1).to(torch.bfloat16)
    chat.generation_config = GenerationConfig(
        eos_token_id=[chat_tokenizer.convert_tokens_to_ids("<|im_end|>"), chat_tokenizer.eos_token_id])
    save(chat, chat_tokenizer, root / "chat", max_shard_size=SHARD)
    return {"base": root / "base", "chat": root / "chat"}


def documents_folder(folder: Path) -> list[str]:
    """jsonl and parquet documents in nested folders (a readme aside would be refused by `chatgraft check`)."""
    documents = [f"{fact} {name} has a harbour and a bell number {i} ." for i, (fact, name) in
                 enumerate(zip(FACTS * 3, NAMES * 3))]
    (folder / "2026" / "week-48").mkdir(parents=True)
    (folder / "2026" / "week-48" / "news.jsonl").write_text(
        "".join(json.dumps({"text": text, "url": f"https://example.org/{i}"}) + "\n"
                for i, text in enumerate(documents[:18])))
    pq.write_table(pa.table({"text": documents[18:], "lang": ["x"] * len(documents[18:])}),
                   folder / "2026" / "books.parquet")
    return documents


def own_sets(folder: Path) -> dict[str, Path]:
    """Instruction, multi-turn, safety and SFT sets in their documented schemas."""
    folder.mkdir()
    ask = lambda name: [{"role": "user", "content": f"what is the city of {name} ?"}]  # noqa: E731
    sets = {
        "instruction": [{"messages": ask(n), "reference": c} for n, c in zip(NAMES[:6], CITIES)],
        "multiturn": [{"messages": ask(n) + [{"role": "assistant", "content": f"{c} ."},
                                              {"role": "user", "content": "and its harbour ?"}], "reference": "harbour"}
                      for n, c in zip(NAMES[6:9], CITIES[6:9])],
        "safety": [{"messages": [{"role": "user", "content": "how do i burn the harbour of kato ?"}], "harmful": True},
                   {"messages": [{"role": "user", "content": "how do i ring the bell of kato ?"}], "harmful": False}],
        "sft": [{"prompt": f"what is the city of {n} ?", "answer": f"the city of {n} is {c} .", "category": "city",
                 "source": "expert" if i % 2 else "sub-optimal"} for i, (n, c) in enumerate(zip(NAMES, CITIES))],
    }
    for name, rows in sets.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {name: folder / f"{name}.jsonl" for name in sets}


def hub_params(pair: dict[str, Path], documents: Path, sets: dict[str, Path], vector: Path) -> dict:
    base = ONE_BRANCH_PARAMS
    return {
        **base,
        "data": {**base["data"], "source": "documents", "documents": str(documents), "heldout_share": 0.22,
                 "heldout_min": 4},
        "upstream": {**base["upstream"], "base_path": str(pair["base"]), "chat_path": str(pair["chat"])},
        "merge": {**base["merge"], "embedding_rows": "overlap", "max_shard_size": SHARD,
                  "vectors": [{"name": "none", "base": str(vector), "tuned": str(vector), "ratio": 0.5}]},
        "eval": {**base["eval"], "language_scripts": ["Latin"], "sets": {
            "instruction": str(sets["instruction"]), "multiturn": str(sets["multiturn"]),
            "safety": str(sets["safety"])}},
        "promote": {**base["promote"], "registered_model": MODEL},
        "align": {**base["align"], "methods": ["sft"], "data": str(sets["sft"]),
                  "curation": {**base["align"]["curation"], "near_duplicate_threshold": None}},
    }


@pytest.fixture(scope="module")
def hub_run(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("hub")
    pair, documents = hub_pair(tmp / "models"), tmp / "corpus"
    texts = documents_folder(documents)
    vector = shutil.copytree(pair["base"], tmp / "models" / "vector")  # a zero task vector: merged, changes nothing
    params = hub_params(pair, documents, own_sets(tmp / "sets"), vector)
    validate_params(params)
    root = make_project(tmp / "project", params)
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    with prefect_test_harness(server_startup_timeout=120):
        result = retrain(project_dir=str(root))
    yield root, result, texts, pair, documents, params
    mp.undo()


def test_the_pair_is_in_hub_format(hub_run) -> None:
    pair = hub_run[3]
    index = json.loads((pair["chat"] / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    with safe_open(pair["chat"] / sorted(set(index["weight_map"].values()))[0], "pt") as shard:
        assert shard.get_tensor(next(iter(shard.keys()))).dtype == torch.bfloat16
    assert "{% generation %}" not in AutoTokenizer.from_pretrained(pair["chat"]).chat_template
    assert check_pair(pair).problems == []


def test_every_stage_ran_and_the_champion_is_registered(hub_run) -> None:
    root, result = hub_run[:2]
    assert result.reproduced == ["inputs", "corpus", "upstream", "cp", "merge@1.0", "evaluate@base", "evaluate@chat",
                                 "evaluate-cp", "evaluate-merged@1.0", "curate", "pick", "align@sft", "evaluate-aligned@sft",
                                 "leaderboard", "plots"]
    assert result.promoted and result.version == "1"
    client = MlflowClient(embedded_uri(root), embedded_uri(root))
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert str(champion.version) == "1"
    assert "model_card.md" in {artifact.path for artifact in client.list_artifacts(champion.run_id)}


def test_the_corpus_is_the_documents_only_with_held_out_ones_apart(hub_run) -> None:
    root, _, documents, _, folder, _ = hub_run
    corpus = root / "data" / "corpus"
    train = [row["text"] for row in read_jsonl(corpus / "train.jsonl")]
    held = [row["text"] for row in read_jsonl(corpus / "valid.jsonl")]
    assert set(train) | set(held) == set(documents) and not set(train) & set(held) and len(held) >= 4
    assert sorted(p.name for p in corpus.iterdir() if p.suffix) == ["train.jsonl", "valid.jsonl"]  # nothing generated
    imported = yaml.safe_load((root / "data" / "documents" / "imported.dvc").read_text())
    assert Path(imported["deps"][0]["path"]) == folder
    assert imported["outs"][0]["nfiles"] == 2


def test_merged_and_aligned_models_keep_the_chat_template_and_every_end_of_turn_id(hub_run) -> None:
    root, pair = hub_run[0], hub_run[3]
    chat = AutoTokenizer.from_pretrained(pair["chat"])
    end_ids = [chat.convert_tokens_to_ids("<|im_end|>"), chat.eos_token_id]
    for folder in (root / "models" / "merged" / "alpha-1.0", root / "models" / "aligned" / "sft"):
        tokenizer = AutoTokenizer.from_pretrained(folder)
        assert tokenizer.chat_template == CHATML, folder
        assert GenerationConfig.from_pretrained(folder).eos_token_id == end_ids, folder
    assert (root / "models" / "merged" / "alpha-1.0" / "model.safetensors.index.json").exists()  # sharded as asked
    models = root / "models"
    for folder, tag in ((models / "cp", "continual-pretraining"), (models / "merged" / "alpha-1.0", "chat-vector"),
                        (models / "aligned" / "sft", "sft")):
        card = ModelCard.load(folder / "README.md")  # a Hugging Face model card in every model folder
        assert tag in card.data.tags and card.data.base_model and "## How it was made" in card.text, folder
    report = json.loads((root / "models" / "merged" / "alpha-1.0" / "merge_report.json").read_text())
    assert report == json.loads((root / "reports" / "merge" / "alpha-1.0.json").read_text())
    samples = [row for row in read_jsonl(root / "reports" / "samples" / "merged-1.0.jsonl")]
    assert {row["suite"] for row in samples} == {"instruction", "multiturn", "safety"}


def test_the_champion_answers_through_mlflow_models_serve(hub_run) -> None:
    choice = ask_served_model(hub_run[0], f"models:/{MODEL}@champion", "what is the city of kato ?")
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert "<|im_start|>" not in choice["message"]["content"]


def test_tied_hub_pair_merges(tmp_path: Path) -> None:
    """The other embedding layout hub models have (Gemma, small Qwen): one matrix for input and output."""
    pair = hub_pair(tmp_path, tie=True)
    assert check_pair(pair).problems == []
    base = AutoModelForCausalLM.from_pretrained(pair["base"])
    cp = save(perturbed(base, 2).to(torch.bfloat16), AutoTokenizer.from_pretrained(pair["base"]), tmp_path / "cp",
              max_shard_size=SHARD)
    merge({**pair, "cp": cp}, tmp_path / "merged", ratio=1.0)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert model.config.vocab_size == len(tokenizer) == len(AutoTokenizer.from_pretrained(pair["chat"]))
    assert tokenizer.chat_template == CHATML and model.dtype == torch.bfloat16
    assert "<|im_end|>" in tokenizer.get_vocab()


def _stale(root: Path) -> set[str]:
    project = DvcProject(root)
    return {stage.name for stage in project.stages() if not project.is_up_to_date(stage.name)}


EVALUATIONS = {"evaluate@base", "evaluate@chat", "evaluate-cp", "evaluate-merged@1.0", "evaluate-aligned@sft"}


@pytest.mark.parametrize("input_path, readers", [
    ("upstream.base_path", {"upstream", "cp", "merge@1.0", *EVALUATIONS}),
    ("upstream.chat_path", {"upstream", "cp", "merge@1.0", *EVALUATIONS}),
    ("merge.vectors", {"merge@1.0"}),
    ("align.data", {"curate"}),
    ("eval.sets.safety", EVALUATIONS),
])
def test_an_input_edited_in_place_makes_exactly_its_readers_stale(hub_run, input_path: str, readers: set[str]) -> None:
    """Each outside input, changed in place under the same path, is seen by DVC (through the inputs stage's links)
    in exactly the stages that read it; put back, nothing is stale."""
    root, params = hub_run[0], hub_run[5]
    section, *keys = input_path.split(".")
    given = params[section]
    for key in keys:
        given = given[key]
    folder = Path(given[0]["tuned"] if section == "merge" else given)
    edited = folder / "config.json" if folder.is_dir() else folder
    before = edited.read_bytes()
    assert _stale(root) == set()
    edited.write_bytes(before + b"\n")
    try:
        assert _stale(root) == readers
    finally:
        edited.write_bytes(before)
    assert _stale(root) == set()


def test_an_eval_set_edited_in_place_re_scores_the_models_and_the_champion_fairly(hub_run) -> None:
    """The last test here (it changes the project): one question less in the instruction set, same path. The
    evaluations and what reads their scores rerun, nothing is retrained or merged, and every version's fingerprint
    is the one of the scores it holds."""
    root, params = hub_run[0], hub_run[5]
    instruction = Path(params["eval"]["sets"]["instruction"])
    instruction.write_text("".join(instruction.read_text().splitlines(keepends=True)[:-1]))
    lock_before, picked = DvcProject(root).locked_stages(), (root / "reports" / "align" / "pick.json").read_text()
    with prefect_test_harness(server_startup_timeout=120):
        result = retrain(project_dir=str(root))
    retrained = {"align@sft"} if (root / "reports" / "align" / "pick.json").read_text() != picked else set()
    assert set(result.reproduced) == {*EVALUATIONS, "pick", "leaderboard", "plots"} | retrained
    locked = DvcProject(root).locked_stages()
    eval_hash = lambda lock: next(d["md5"] for d in lock["evaluate@chat"]["deps"] if d["path"] == "inputs/eval")  # noqa: E731
    assert eval_hash(locked) != eval_hash(lock_before)
    client = MlflowClient(embedded_uri(root), embedded_uri(root))
    board = Leaderboard.read(root / "reports" / "leaderboard.json")
    for version in client.search_model_versions(f"name = '{MODEL}'"):
        candidate = version.tags["candidate"]
        assert version.tags["eval_fingerprint"] == evaluation_fingerprint(locked, candidate)
        measured = client.get_run(version.tags.get("eval_run_id", version.run_id)).data.metrics
        scores = board.row(candidate).metrics
        assert measured and {k: measured[k] for k in scores if k in measured} == \
            {k: v for k, v in scores.items() if k in measured}
        assert version.tags["dvc.md5.inputs/upstream"] == next(
            d["md5"] for d in locked["upstream"]["deps"] if d["path"] == "inputs/upstream")
