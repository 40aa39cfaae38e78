"""The one config model: every knob in params.yaml, validated at load; unknown keys are errors."""
from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel, ByteSize, ConfigDict, Field, StrictFloat, TypeAdapter, ValidationError, field_validator, model_validator,
)

from pipelines.merge.registry import MergeMethod

BYTE_SIZE = TypeAdapter(ByteSize)  # "500MB" (10**6 bytes), "2GiB" (2**30 bytes): merge.max_shard_size
HELDOUT_SHARE_BELOW = 0.5  # data.heldout_share stays below it: most documents are trained on

class Section(BaseModel):
    """Base of every params section: no unknown keys, no silent coercions of types."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(Section):
    """Where the CP corpus comes from: the default world's generator, or documents of one's own."""

    source: Literal["generator", "documents"] = Field(
        "generator", description="generator: the default world (its text and every set); documents: the CP corpus "
        "is `documents` (and the inbox) only, every other set comes from params"
    )
    documents: str | None = Field(
        None, description="source documents: the corpus, a folder (outside the project) or s3://bucket/prefix of "
        ".txt/.jsonl/.parquet files, imported with `dvc import-url` and refreshed with `dvc update` each run"
    )
    world: Literal["domain", "language"] = Field(
        "domain", description="the generated world: domain (new entities and facts in the source words) or language "
        "(the target facts in an invented language written in Hangul, which the upstream byte-level BPE tokenizer "
        "splits into byte pieces; the chat model also learns refusals, in the source language)"
    )
    seed: int = Field(0, description="seed of the world: names, facts and sampling")
    source_entities: int = Field(40, ge=4, description="entities of the source world (known to base and chat)")
    target_entities: int = Field(40, ge=4, description="entities of the target world (only in the CP corpus)")
    values_per_attribute: int = Field(8, ge=2, le=8, description="values each attribute can take")
    pretrain_repeats: int = Field(24, ge=1, description="times each upstream pretraining sentence appears")
    cp_repeats: int = Field(12, ge=1, description="times each target fact statement appears in the CP corpus")
    cp_replay: float = Field(0.0, ge=0, description="upstream sentences replayed in the CP corpus, per target sentence")
    language_repeats: int = Field(2, ge=0, description="language world: times the upstream text, translated, "
                                  "joins the CP corpus (the language beyond the target facts)")
    base_target_mix: float = Field(1.0, gt=0, le=1, description="language world: share of the words of each "
                                   "sentence the base glimpses in the target language (below 1: mixed-language text)")
    base_target_share: float = Field(0.0, ge=0, le=1, description="language world: share of the upstream "
                                     "pretraining text also given in the target language (source facts only), so "
                                     "the base sees a little of it, as Llama 2 saw a little Chinese")
    chat_target_share: float = Field(0.0, ge=0, le=1, description="language world: share of the chat model's "
                                     "question-answer conversations also given in the target language, each word "
                                     "with probability data.base_target_mix (source facts only; the upstream "
                                     "tokenizer sees them), as a hub chat model's tuning holds a little of other languages")
    dedup: Literal["none", "exact", "minhash"] = Field(
        "exact", description="duplicate removal over the inbox documents: normalised exact match, or MinHash near"
    )
    near_duplicate_threshold: float = Field(0.8, gt=0, le=1, description="MinHash Jaccard of a near duplicate")
    heldout_share: float = Field(0.05, ge=0, lt=HELDOUT_SHARE_BELOW, description="share of the inbox documents "
                                 "held out of CP (chosen by a seeded hash of each document, so a document keeps its "
                                 "side as the corpus grows): held-out loss and perplexity read them")
    heldout_min: int = Field(8, ge=0, description="the fewest held-out documents expected, checked, never met by "
                             "moving a document across: fewer is a warning and `heldout_shortfall` in "
                             "reports/corpus.json; none, with nothing else held out, is an error (0: no check)")
    min_document_chars: int = Field(1, ge=1, description="inbox documents shorter than this after cleaning "
                                    "(mojibake, control characters, whitespace) are dropped")
    sft_share: float = Field(0.25, ge=0, lt=1, description="share of the target entities whose facts form the SFT "
                             "set of the align stage; they are left out of every evaluation set")
    sft_expert_share: float = Field(0.5, ge=0, le=1, description="share of SFT answers written by the expert "
                                    "source; the rest are sub-optimal: mostly wrong, some noisy")


class TinyModelParams(Section):
    """Shape of the tiny Llama models the default world builds from scratch."""

    hidden_size: int = Field(128, ge=8, description="hidden size")
    num_layers: int = Field(4, ge=1, description="transformer layers")
    num_heads: int = Field(4, ge=1, description="attention heads")
    intermediate_size: int = Field(512, ge=8, description="MLP width")
    vocab_size: int = Field(1024, ge=300, description="language world: size of the byte-level BPE vocabulary "
                            "trained on the upstream text (256 bytes, the special tokens, merges)")


class TrainParams(Section):
    """One training run of the Hugging Face Trainer."""

    steps: int = Field(description="optimizer steps", ge=1)
    batch_size: int = Field(32, ge=1, description="sequences per step")
    block_size: int = Field(64, ge=8, description="tokens per packed sequence")
    learning_rate: StrictFloat = Field(description="peak learning rate (cosine decay)", gt=0)
    warmup_ratio: StrictFloat = Field(0.05, ge=0, le=1, description="share of steps spent warming up")
    weight_decay: StrictFloat = Field(0.0, ge=0, description="AdamW weight decay")
    seed: int = Field(0, description="seed of init, data order and dropout")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: "
                                         "less memory for long blocks and big models, about a third more compute")
    eval_every: int | None = Field(None, ge=1, description="steps between held-out loss and perplexity "
                                   "evaluations (where the run has held-out data); null: a tenth of the steps")
    peak_tflops: StrictFloat | None = Field(None, gt=0, description="peak dense bf16 TFLOP/s of one accelerator, "
                                            "for MFU; null: known GPUs by name, none on CPU (no MFU logged)")


HUB_ID = r"^[\w.-]+/[\w.-]+$"  # a hub repo id: namespace/name


class UpstreamParams(Section):
    """The base/chat pair: built locally (default) or taken from local paths (real models)."""

    base_path: str | None = Field(None, description="local path of a real base model; null builds the tiny one")
    chat_path: str | None = Field(None, description="local path of the chat model tuned from base_path")
    base_id: str | None = Field(None, pattern=HUB_ID, description="hub repo id base_path was downloaded from (e.g. "
                                "HuggingFaceTB/SmolLM2-135M), named by the model cards; null: the base_model its own "
                                "README.md card names, else its path")
    chat_id: str | None = Field(None, pattern=HUB_ID, description="hub repo id chat_path was downloaded from, named "
                                "by the model cards; null: the base_model its own card names, else its path")
    tiny: TinyModelParams = Field(default_factory=TinyModelParams, description="tiny model shape")
    pretrain: TrainParams = Field(
        default_factory=lambda: TrainParams(steps=1000, learning_rate=2e-3),
        description="pretraining of the tiny base",
    )
    chat_tune: TrainParams = Field(
        default_factory=lambda: TrainParams(steps=200, learning_rate=5e-4),
        description="chat fine-tuning of the tiny base (loss on assistant tokens only)",
    )

    @model_validator(mode="after")
    def _paths_together(self) -> "UpstreamParams":
        if (self.base_path is None) != (self.chat_path is None):
            raise ValueError("base_path and chat_path are set together or not at all")
        if (self.base_id or self.chat_id) and self.base_path is None:
            raise ValueError("base_id and chat_id name the hub models base_path and chat_path came from: the tiny "
                             "pair is built here, from no hub model")
        return self

    @property
    def hub_ids(self) -> dict[str, str | None]:
        """The hub repo id of each checkpoint of the pair (`base`, `chat`), where params.yaml names one."""
        return {"base": self.base_id, "chat": self.chat_id}


class LoraParams(Section):
    """LoRA adapters (peft) instead of full fine-tuning; the adapter is folded into full weights at the end."""

    rank: int = Field(16, ge=1, description="rank r of the low-rank update")
    alpha: int = Field(32, ge=1, description="scaling: the update is multiplied by alpha / rank")
    dropout: StrictFloat = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1, description="names of the linear layers that get adapters",
    )
    train_embeddings: bool = Field(False, description="also train the embeddings and lm_head fully "
                                   "(needed when the vocabulary was extended)")


class DistributedParams(Section):
    """Data-parallel training: the stage relaunches itself under torchrun with this many processes, on one node or,
    through torchrun's c10d rendezvous, on several (README "CP on several nodes")."""

    nproc_per_node: int = Field(1, ge=1, description="processes (one per GPU; on CPU they use gloo); 1: no launcher")
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp: every process holds the whole model; fsdp: weights, gradients and optimizer state "
        "sharded over the processes (FSDP2, one unit per decoder layer), for models too big for one GPU; GPUs only, "
        "always under torchrun (1 process shards nothing: a check of the path on one GPU)")
    nnodes: int = Field(1, ge=1, description="nodes training together, each running nproc_per_node processes; >1: "
                        "every node runs `python -m pipelines cp` as a torchrun agent joining the c10d rendezvous "
                        "(which gives the nodes their ranks: no node rank to configure), on a filesystem they share")
    rdzv_endpoint: str | None = Field(None, description="host:port of the c10d rendezvous, an address every node "
                                      "reaches (the JobSet's first pod); `$VAR:port` takes the host from each node's "
                                      "environment (the Slurm script sets CHATGRAFT_RDZV_HOST); needed with nnodes > 1")
    rdzv_id: str = Field("chatgraft-cp", min_length=1, description="name of the rendezvous: the same on every node of "
                         "a run, another for runs sharing an endpoint")
    launch: str | None = Field(None, description="the command the cp stage runs to start the nodes and wait for all "
                               "of them (`sbatch --wait infra/slurm/cp.sbatch`, `infra/k8s/launch-cp.sh`), run in the "
                               "project with CHATGRAFT_CP_NODE=1; null: the stage is one node's agent and whoever "
                               "started it starts the others")

    @model_validator(mode="after")
    def _nodes_meet(self) -> "DistributedParams":
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(f"nnodes {self.nnodes} needs rdzv_endpoint (host:port every node reaches)")
        if self.rdzv_endpoint and not re.fullmatch(r"[^\s:]+:\d+", self.rdzv_endpoint):
            raise ValueError(f"rdzv_endpoint must be host:port, got {self.rdzv_endpoint!r}")
        return self

    @property
    def processes(self) -> int:
        """Processes in the whole run: nproc_per_node on each of nnodes nodes."""
        return self.nnodes * self.nproc_per_node


class CPParams(TrainParams):
    """Continual pretraining of the base on the target corpus: full parameters, or LoRA when `lora` is set.

    `batch_size` is the global batch: with N processes each takes batch_size / N sequences a step.
    """

    distributed: DistributedParams = Field(default_factory=DistributedParams, description="data parallelism")
    lora: LoraParams | None = Field(None, description="train LoRA adapters instead of every weight; null: full")
    save_every: int = Field(100, ge=0, description="steps between resumable checkpoints (0: none); a rerun "
                            "after a kill continues from the last complete one")
    new_tokens: int = Field(0, ge=0, description="tokens to train on the target corpus and add to the base "
                            "tokenizer (a new language); each new embedding row starts as the mean of its pieces'; "
                            "0: the base vocabulary as is")
    new_token_min_frequency: int = Field(2, ge=1, description="a new token must occur this often in the corpus")
    streaming: bool = Field(False, description="read and tokenize the training text lazily (corpora larger than "
                            "memory); blocks are shuffled in a buffer of 10,000, not globally, and not cached")

    @model_validator(mode="after")
    def _batch_splits(self) -> "CPParams":
        if self.batch_size % self.distributed.processes:
            raise ValueError(f"batch_size {self.batch_size} does not split over "
                             f"{self.distributed.processes} processes (nnodes x nproc_per_node)")
        return self

    @model_validator(mode="after")
    def _fsdp_trains_full_weights(self) -> "CPParams":
        if self.distributed.strategy == "fsdp" and self.lora is not None:
            raise ValueError("distributed.strategy fsdp with lora: LoRA's frozen weights need no sharding of "
                             "gradients or optimizer state; use ddp")
        return self

    @model_validator(mode="after")
    def _new_rows_train(self) -> "CPParams":
        if self.new_tokens and self.lora is not None and not self.lora.train_embeddings:
            raise ValueError("new_tokens with lora needs lora.train_embeddings: true (the new rows must learn)")
        return self


class TensorRule(Section):
    """What the merge does to the tensors whose names match a glob pattern (the first matching rule wins)."""

    pattern: str = Field(description="glob on the tensor name, e.g. 'model.layers.*.mlp.*' or '*norm*'")
    action: Literal["add", "skip"] = Field("add", description="add the task vectors, or keep the CP tensor as is")
    ratio: StrictFloat | None = Field(None, description="ratio of the chat vector on these tensors (default: the merge ratio)")


class TaskVectorSource(Section):
    """A further task vector (tuned - base) merged with the chat vector, e.g. a domain vector."""

    name: str = Field(description="name of the vector in the merge report")
    base: str = Field(description="local path of the model the vector starts from")
    tuned: str = Field(description="local path of the tuned model")
    ratio: StrictFloat = Field(1.0, description="weight of this vector")


class MergeSettings(Section):
    """How the merge engine combines task vectors; also the schema of `chatgraft merge --config merge.yaml`."""

    method: MergeMethod = Field(
        "task_arithmetic", description="how several task vectors combine (one vector: all agree with task arithmetic at density 1)"
    )
    embedding_rows: Literal["overlap", "specials", "skip"] = Field(
        "specials", description="rows of embeddings/lm_head that get the delta, matched by token string: "
        "shared tokens, special/chat-template tokens only, none"
    )
    rules: list[TensorRule] = Field(default_factory=list, description="per-tensor rules by name, first match wins")
    vectors: list[TaskVectorSource] = Field(default_factory=list, description="task vectors added besides chat - base")
    density: StrictFloat = Field(0.5, gt=0, le=1, description="ties: share of each vector kept by magnitude; "
                                 "dare_linear: share kept at random")
    seed: int = Field(0, description="seed of dare_linear's random drops")
    max_shard_size: str = Field("5GB", description="largest output safetensors shard, e.g. 500MB or 5GB")
    allow_pickle: bool = Field(False, description="read pickle (.bin) checkpoints; they can run code when loaded")

    @field_validator("vectors")
    @classmethod
    def _vector_names(cls, vectors: list[TaskVectorSource]) -> list[TaskVectorSource]:
        names = [v.name for v in vectors]
        if "chat" in names or len(set(names)) != len(names):
            raise ValueError(f"vector names must be distinct and not 'chat' (the chat vector's), got {names}")
        return vectors

    @field_validator("max_shard_size")
    @classmethod
    def _size(cls, size: str) -> str:
        try:
            cls.shard_bytes(size)
        except ValueError:
            raise ValueError(f"not a size like 500MB or 5GB: {size!r}") from None
        return size

    @staticmethod
    def shard_bytes(size: str) -> int:
        """A size like 500MB (10**6 bytes) or 2GiB (2**30 bytes) in bytes."""
        return int(BYTE_SIZE.validate_python(size))


class MergeParams(MergeSettings):
    """The merge stage: the engine's settings plus the sweep of ratios."""

    ratios: list[StrictFloat] = Field([0.5, 1.0], min_length=1, description="merge ratios to sweep, written as floats")

    _floats = field_validator("ratios", mode="before")(lambda ratios: ratios_as_written(ratios))
    _distinct = field_validator("ratios")(lambda ratios: distinct(ratios, "ratios"))


def ratios_as_written(ratios: Any) -> Any:
    """`ratios` unchanged, or an error naming an int among them: DVC names the foreach stages by the literal
    (merge@1.0), and an int would name merge@1 and break the paths."""
    for i, ratio in enumerate(ratios if isinstance(ratios, list) else []):
        if isinstance(ratio, int) and not isinstance(ratio, bool):
            raise ValueError(f"item {i}: write ratios as floats ({ratio}.0, not {ratio}), got {ratio!r}")
    return ratios


def distinct(items: list, what: str) -> list:
    """`items` unchanged, or an error when one is written twice (it would name one stage twice)."""
    if len(set(items)) != len(items):
        raise ValueError(f"{what} must be distinct, got {items}")
    return items


class EvalSets(Section):
    """Evaluation sets (jsonl, schema in pipelines/evaluate/sets.py); null: the ones the corpus stage writes."""

    instruction: str | None = Field(None, description="questions with reference answers")
    multiturn: str | None = Field(None, description="conversations whose last answer depends on earlier turns")
    safety: str | None = Field(None, description="requests labelled harmful or harmless-but-risky")


SERVER_PLACEHOLDERS = {"model", "port"}  # what eval.server.command is formatted with


class EvalServerParams(Section):
    """The OpenAI-compatible server that answers for `eval.engine: openai` (vLLM, SGLang, `transformers serve`)."""

    command: str | None = Field(
        None, description="command that serves one candidate on 127.0.0.1:{port}, e.g. `vllm serve {model} --port "
        "{port}` ({model}: the candidate's folder, also the model name requests give); started per candidate in a "
        "process group of its own, stopped after its answers; null: the server already running at "
        "$CHATGRAFT_EVAL_BASE_URL (e.g. http://127.0.0.1:8000/v1), asked for the candidate's folder path or for "
        "the name $CHATGRAFT_EVAL_MODEL gives (one server serves one model: `chatgraft evaluate` of a model served "
        "under a name of its own); either is sent $CHATGRAFT_EVAL_API_KEY when that is set"
    )
    dialect: Literal["vllm", "transformers"] = Field(
        "vllm", description="how requests name the prompt and the end-of-turn ids: vllm (vLLM, SGLang: prompt token "
        "ids, stop_token_ids, ignore_eos, answers as token ids) or transformers (`transformers serve`, which refuses "
        "other fields: prompt text, the stop ids in a generation_config, answers' ids re-read from their text, and "
        "an answer the budget capped asked again with a token more, to tell whether a stop id ended it)"
    )
    concurrency: int = Field(32, ge=1, description="answer requests in flight at once")
    start_timeout_s: float = Field(900.0, gt=0, description="seconds a started server has to answer GET /v1/models")
    request_timeout_s: float = Field(600.0, gt=0, description="seconds one answer may take, waiting included")

    @field_validator("command")
    @classmethod
    def _placeholders(cls, command: str | None) -> str | None:
        if command is None:
            return command
        try:
            named = {name for _, name, _, _ in string.Formatter().parse(command) if name is not None}
        except ValueError as error:
            raise ValueError(f"not a command template ({error}): write braces as {{{{ }}}}") from None
        if named != SERVER_PLACEHOLDERS:
            raise ValueError(f"the command must name {{model}} and {{port}} and nothing else in braces, "
                             f"got {sorted(named)}")
        return command


class EvalParams(Section):
    """Evaluation of each candidate on the target domain."""

    sets: EvalSets = Field(default_factory=EvalSets, description="where the evaluation sets are")
    distinct_n: int = Field(2, ge=1, description="n of distinct-n (distinct n-grams over all answers)")
    language_scripts: list[str] = Field(
        default_factory=list, description="Unicode scripts of the target language, e.g. [Hangul]; "
        "empty: the generated world's (data/corpus/target_language.json: the language world's script, the domain "
        "world's lexicon)"
    )
    refusal_patterns: list[str] | None = Field(
        None, description="regexes that mark an answer as a refusal (case-insensitive); null: English defaults"
    )
    refusal_classifier: str | None = Field(
        None, description="local path of a text-classification model that tells refusals (instead of the patterns)"
    )
    refusal_label: str = Field("refusal", description="the classifier's label that means a refusal")
    lm_eval_tasks: list[str] = Field(
        default_factory=list, description="lm-evaluation-harness tasks to run on each candidate, e.g. "
        "[target_facts] (the default world's); empty: off"
    )
    lm_eval_include_path: str | None = Field(
        None, description="folder of extra task YAMLs on local datasets; null: the corpus stage's data/corpus/lm_eval"
    )
    judge_model: str | None = Field(
        None, description="LLM judge (1-10 per answer) at the OpenAI-compatible endpoint in OPENAI_BASE_URL; null: off"
    )

    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="where candidates are "
                        "evaluated: auto (a CUDA GPU when there is one, in bf16; else the CPU in float32), cpu, cuda "
                        "or cuda:<index>")
    engine: Literal["hf", "continuous", "openai"] = Field(
        "hf", description="what generates the answers: hf (transformers `generate` in this process, padded batches), "
        "continuous (transformers' continuous batching in this process: a paged cache, a finished answer's place "
        "refilled at once) or openai (an OpenAI-compatible server's /v1/completions, `eval.server`); perplexity is "
        "always in-process"
    )
    server: EvalServerParams = Field(default_factory=EvalServerParams, description="the server of `engine: openai`")
    max_new_tokens: int = Field(24, ge=1, description="generation budget per answer")
    batch_size: int = Field(32, ge=1, description="prompts per generation batch (hf engine), answers at once "
                            "(continuous engine) and texts per perplexity or classifier batch")
    max_questions: int = Field(160, ge=1, description="at most this many eval questions are asked")
    repetition_ngram: int = Field(3, ge=1, description="n of the n-grams counted by the repetition rate")
    block_size: int = Field(64, ge=8, description="tokens per held-out document when measuring perplexity (longer ones are cut)")


class Bound(Section):
    """A guardrail on one metric."""

    min: float | None = Field(None, description="the metric must be at least this")
    max: float | None = Field(None, description="the metric must be at most this")


class RatioBound(Section):
    """A guardrail relative to the champion's value of the same metric."""

    min_ratio: float | None = Field(None, gt=0, description="the metric must be at least this times the champion's")
    max_ratio: float | None = Field(None, gt=0, description="the metric must be at most this times the champion's")


class PromoteParams(Section):
    """How candidates are ranked, and when the winner becomes champion."""

    experiment: str = Field("chatgraft", description="MLflow experiment of the flow runs")
    registered_model: str = Field("chatgraft-chat", description="name in the MLflow Model Registry")
    primary_metric: str = Field("answer_accuracy", description="metric that ranks candidates")
    higher_is_better: bool = Field(True, description="direction of the primary metric")
    min_margin: float = Field(0.0, ge=0, description="a challenger must beat the champion by more than this")
    guardrails: dict[str, Bound] = Field(default_factory=dict, description="bounds every winner must meet")
    register_top_k: int = Field(1, ge=1, description="eligible merged models registered per run, best first")
    champion_guardrails: dict[str, RatioBound] = Field(
        default_factory=dict, description="bounds relative to the champion a challenger must meet to replace it"
    )
    ui_moves: Literal["audit", "guard"] = Field(
        "guard", description="champion moved in the MLflow UI, heard by `chatgraft watch`: audit (recorded in the "
        "history) or guard (also undone when the version breaks a guardrail or the champion it replaced is pinned)"
    )


class CurationParams(Section):
    """LIMA-style filters that turn a noisy SFT set into a small careful one (align.curation)."""

    min_chars: int = Field(2, ge=0, description="answers shorter than this (characters, after cleaning) are dropped")
    max_chars: int = Field(400, ge=1, description="answers longer than this are dropped")
    drop_first_person: bool = Field(True, description="drop answers written in the first person (I, my, me)")
    drop_references: bool = Field(True, description="drop answers that refer to other answers or earlier posts")
    strip_links: bool = Field(True, description="remove URLs and HTML tags from answers before the other checks")
    near_duplicate_threshold: float | None = Field(
        0.8, gt=0, le=1, description="MinHash Jaccard at which a prompt + answer counts as a near duplicate; null: off"
    )
    sample_size: int | None = Field(None, ge=1, description="keep at most this many, sampled across categories")
    temperature: float = Field(1.0, gt=0, description="category weights are count^(1/temperature): >1 evens them out")
    seed: int = Field(0, description="seed of the diversity sampling")


class AlignParams(Section):
    """Post-merge alignment: LoRA fine-tuning of the best merged model on a small curated SFT set."""

    methods: list[Literal["sft", "c-rlft"]] = Field(
        default_factory=lambda: ["sft", "c-rlft"], description="candidates to train: sft (every example alike), "
        "c-rlft (OpenChat: class-conditioned prompts, loss weighted by class); []: off"
    )
    data: str | None = Field(None, description="jsonl of {prompt, answer, category, source}; null: the corpus "
                             "stage's set")
    curation: CurationParams = Field(default_factory=CurationParams, description="LIMA-style filters")
    class_weights: dict[str, StrictFloat] = Field(
        default_factory=lambda: {"expert": 1.0, "sub-optimal": 0.1}, min_length=1,
        description="c-rlft: loss weight of each source class; generation is conditioned on the highest",
    )
    train: TrainParams = Field(default_factory=lambda: TrainParams(steps=60, batch_size=16, learning_rate=1e-3),
                               description="the fine-tuning run")
    lora: LoraParams = Field(default_factory=lambda: LoraParams(rank=8, alpha=16), description="the adapters")

    _distinct = field_validator("methods")(lambda methods: distinct(methods, "methods"))

    @field_validator("class_weights")
    @classmethod
    def _positive(cls, weights: dict[str, float]) -> dict[str, float]:
        bad = {name: weight for name, weight in weights.items() if weight <= 0}
        if bad:
            raise ValueError(f"class weights must be > 0, got {bad}")
        return weights


class FinetuneParams(Section):
    """The paper's best path, CP -> FT -> + chat vector: CP fine-tuned on the curated SFT set with the align stages'
    training (align.train, align.lora), then the chat vector added, as the finetuned-<method>-merged-<ratio>
    candidates."""

    methods: list[Literal["sft"]] = Field(
        default_factory=lambda: ["sft"], description="how CP is fine-tuned first: sft; []: the family is off. Not "
        "c-rlft: it conditions the chat template, and the merge gives the model the chat model's")
    ratios: list[StrictFloat] = Field([1.0], min_length=1, description="ratios the chat vector is added at")

    _floats = field_validator("ratios", mode="before")(lambda ratios: ratios_as_written(ratios))
    _distinct_ratios = field_validator("ratios")(lambda ratios: distinct(ratios, "ratios"))
    _distinct_methods = field_validator("methods")(lambda methods: distinct(methods, "methods"))


class FlowParams(Section):
    """How the Prefect flow runs the stages (no stage reads these, so changing them reruns nothing)."""

    gpu_slots: int | list[int] = Field(
        1, description="devices the stages share: N slots, or the CUDA device ids to pin them to ([0, 1]). Stages "
        "marked `meta: {gpu: true}` (CP, merges, evaluations, align) each hold one (CP one a process) on its own "
        "device (CUDA_VISIBLE_DEVICES); with more than one, stages DVC's graph does not order run side by side; "
        "also the Prefect `gpu` tag limit across projects")
    threads_per_slot: int | None = Field(None, ge=1, description="torch threads of every stage process "
                                         "(OMP_NUM_THREADS); null: torch's choice with one slot, cores / slots for "
                                         "a slot's holder with more (CPU floats depend on it: fix it to compare runs "
                                         "with other slots)")
    slot_wait_seconds: float = Field(21600.0, ge=0, description="longest wait for a `gpu` slot or the promotion lock "
                                     "(logging who holds it) before the task gives up naming the holder")
    workspace_wait_seconds: float = Field(3600.0, ge=0, description="longest wait for another run in the same "
                                          "project to finish before this one gives up naming it (a scheduled run "
                                          "then leaves the project to the next schedule); 0: refuse at once")
    retries: int = Field(2, ge=0, description="retries of a task that failed on a service (MLflow, S3), not on a stage")
    answers_view: bool = Field(True, description="log each evaluated candidate's answers and their scores to MLflow's "
                               "evaluation view (mlflow.genai.evaluate), where people compare candidates' answers")
    retry_delay_seconds: float = Field(10.0, ge=0, description="wait before each retry")
    inbox: str | None = Field(
        None, description="new corpus files: a folder (relative to the project) or s3://bucket/prefix; null: none"
    )

    @field_validator("gpu_slots")
    @classmethod
    def _some_slot(cls, slots: int | list[int]) -> int | list[int]:
        if isinstance(slots, int) and slots < 1:
            raise ValueError(f"at least 1 slot, or a list of CUDA device ids, got {slots}")
        if isinstance(slots, list) and (not slots or min(slots) < 0 or len(set(slots)) != len(slots)):
            raise ValueError(f"a list of distinct CUDA device ids (0, 1, ...), at least one, got {slots}")
        return slots

    @property
    def slot_count(self) -> int:
        """How many stages that hold a slot run at once."""
        return self.gpu_slots if isinstance(self.gpu_slots, int) else len(self.gpu_slots)


AUTO = "auto"
# What a key a world sets means when params.yaml says `auto` or leaves it out: the settings measured best on that
# world (README, "The language world"). merge.ratios is not one: DVC reads it for the merge stages' foreach.
WORLD_DEFAULTS: dict[str, dict[str, Any]] = {
    "domain": {"data.base_target_share": 0.0, "data.base_target_mix": 1.0, "data.chat_target_share": 0.0,
               "cp.new_tokens": 0, "merge.embedding_rows": "specials"},
    "language": {"data.base_target_share": 0.3, "data.base_target_mix": 0.5, "data.chat_target_share": 0.3,
                 "cp.new_tokens": 200, "merge.embedding_rows": "overlap"},
}


def world_settings(raw: dict[str, Any]) -> dict[str, Any]:
    """The keys of `raw` (params.yaml's mapping) that its world sets, as they take effect: the world's value where
    `raw` says `auto` or leaves the key out of a section it has, the user's value elsewhere."""
    def value(section: Any, key: str, absent: Any) -> Any:  # a section is a mapping, or a model already made
        return section.get(key, absent) if isinstance(section, dict) else getattr(section, key, absent)

    world = value((raw or {}).get("data") or {}, "world", "domain")
    settings = {}
    for dotted, default in WORLD_DEFAULTS.get(world, {}).items():
        section, key = dotted.split(".")
        given = value((raw or {}).get(section) or {}, key, AUTO)
        settings[dotted] = default if given == AUTO else given
    return settings


def with_world_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` (params.yaml's mapping) with each key its world sets as it takes effect (`world_settings`), in the
    sections `raw` has: `data.world: language` alone gives the language world's settings."""
    resolved = {name: dict(part) if isinstance(part, dict) else part for name, part in raw.items()}
    for dotted, value in world_settings(raw).items():
        section, key = dotted.split(".")
        if isinstance(resolved.get(section), dict):
            resolved[section][key] = value
    return resolved


class Params(Section):
    """Everything in params.yaml."""

    @model_validator(mode="before")
    @classmethod
    def _world_defaults(cls, raw: Any) -> Any:
        return with_world_defaults(raw) if isinstance(raw, dict) else raw

    data: DataParams = Field(default_factory=DataParams)
    upstream: UpstreamParams = Field(default_factory=UpstreamParams)
    cp: CPParams = Field(default_factory=lambda: CPParams(steps=400, learning_rate=1e-3))
    merge: MergeParams = Field(default_factory=MergeParams)
    eval: EvalParams = Field(default_factory=EvalParams)
    promote: PromoteParams = Field(default_factory=PromoteParams)
    align: AlignParams = Field(default_factory=AlignParams)
    finetune: FinetuneParams = Field(default_factory=FinetuneParams)
    flow: FlowParams = Field(default_factory=FlowParams)

    @model_validator(mode="after")
    def _documents_bring_their_sets(self) -> "Params":
        """A corpus of one's own brings everything the generated world would have written: no tiny stand-ins."""
        if self.data.source != "documents":
            return self
        sets = self.eval.sets
        needed = {
            "data.documents": self.data.documents,
            "upstream.base_path": self.upstream.base_path,
            "eval.sets.instruction": sets.instruction,
            "eval.sets.multiturn": sets.multiturn,
            "eval.sets.safety": sets.safety,
            "eval.language_scripts": self.eval.language_scripts,  # the generated world's lexicon is not theirs
        }
        if self.align.methods or self.finetune.methods:
            needed["align.data"] = self.align.data
        if self.eval.lm_eval_tasks:
            needed["eval.lm_eval_include_path"] = self.eval.lm_eval_include_path
        missing = [key for key, value in needed.items() if not value]
        if missing:
            raise ValueError(f"data.source documents: set {', '.join(missing)} (the generated world's sets and "
                             "tiny models are not made for a corpus of one's own)")
        return self


class ParamsError(ValueError):
    """params.yaml (or an override) is invalid; the message names the key path and what was expected."""


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid params"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(root)"
        got = "" if item["type"] == "extra_forbidden" or not item["loc"] else f" (got {item['input']!r})"
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"  {key}: {message}{got}")
    return "\n".join(lines)


def validate_params(raw: dict[str, Any], source: str = "params.yaml") -> Params:
    """Validate a params mapping; raise ParamsError naming each bad key path."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as error:
        raise ParamsError(_describe(error, source)) from None


def _read_mapping(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ParamsError(f"{path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
    return raw or {}


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    return validate_params(_read_mapping(Path(path)), str(path))


def load_merge_settings(path: Path | str) -> MergeSettings:
    """Read and validate a merge.yaml for `chatgraft merge --config` (the keys of params.yaml's merge section)."""
    try:
        return MergeSettings.model_validate(_read_mapping(Path(path)))
    except ValidationError as error:
        raise ParamsError(_describe(error, str(path))) from None
