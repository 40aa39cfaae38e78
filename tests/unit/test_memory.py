"""The CP memory estimate: parameter counts from the config alone, and how each knob moves the figures."""
import re
from pathlib import Path

from transformers import LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from flows.cli import app
from pipelines.config import CPParams, DistributedParams, LoraParams, load_params
from pipelines.preflight import input_problems
from pipelines.training.lora import with_lora
from pipelines.training.memory import estimate_cp_memory

REPO = Path(__file__).resolve().parents[2]
CONFIG = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
FULL = CPParams(steps=1, learning_rate=1e-3, batch_size=8, block_size=32)


def test_parameters_counted_from_the_config_match_the_model() -> None:
    estimate = estimate_cp_memory(CONFIG, FULL)
    assert estimate.parameters == sum(p.numel() for p in LlamaForCausalLM(CONFIG).parameters())
    assert estimate.weights == estimate.gradients == 4 * estimate.parameters  # float32 when the config names none
    assert estimate.optimizer == 2 * estimate.gradients  # AdamW: two states a weight


def test_lora_trains_what_peft_trains() -> None:
    lora = LoraParams(rank=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    estimate = estimate_cp_memory(CONFIG, FULL.model_copy(update={"lora": lora}))
    trainable, _ = with_lora(LlamaForCausalLM(CONFIG), lora).get_nb_trainable_parameters()
    assert estimate.trainable == trainable and estimate.gradients == 4 * trainable


def test_bf16_frozen_weights_checkpointing_and_more_processes_need_less() -> None:
    bf16 = LlamaConfig(**{**CONFIG.to_dict(), "dtype": "bfloat16"})
    assert estimate_cp_memory(bf16, FULL) == estimate_cp_memory(CONFIG, FULL)  # float32 masters either way
    lora = FULL.model_copy(update={"lora": LoraParams(rank=4, alpha=8)})
    frozen = estimate_cp_memory(bf16, lora).weights - estimate_cp_memory(bf16, lora).gradients  # adapters fp32
    assert frozen * 2 == estimate_cp_memory(CONFIG, lora).weights - estimate_cp_memory(CONFIG, lora).gradients
    checkpointed = FULL.model_copy(update={"gradient_checkpointing": True})
    assert estimate_cp_memory(CONFIG, checkpointed).activations < estimate_cp_memory(CONFIG, FULL).activations
    two = FULL.model_copy(update={"distributed": DistributedParams(nproc_per_node=2)})
    assert estimate_cp_memory(CONFIG, two).activations * 2 == estimate_cp_memory(CONFIG, FULL).activations


def test_fsdp_shards_model_state_but_the_layers_in_use() -> None:
    ddp, fsdp = (FULL.model_copy(update={"distributed": DistributedParams(nproc_per_node=4, strategy=strategy)})
                 for strategy in ("ddp", "fsdp"))
    whole, sharded = estimate_cp_memory(CONFIG, ddp), estimate_cp_memory(CONFIG, fsdp)
    layer = sum(p.numel() for p in LlamaForCausalLM(CONFIG).model.layers[0].parameters())
    assert sharded.weights == whole.weights // 4 + 2 * layer * 2  # two layers gathered at a time, in bf16
    assert sharded.gradients == whole.gradients // 4 and sharded.optimizer == whole.optimizer // 4
    assert sharded.activations == whole.activations


def test_the_example_real_run_is_estimated_from_its_config() -> None:
    example = REPO / "examples" / "real-run"
    result = CliRunner().invoke(app, ["memory", "--params", str(example / "params.yaml"),
                                      "--model-config", str(example / "llama-3-8b.config.json")])
    assert result.exit_code == 0, result.output
    assert "8 process(es) (fsdp)" in result.output and "8.03 B" in result.output  # Llama 3 8B's parameter count
    total = re.search(r"total per process\s+([\d.]+) GiB", result.output)
    assert total and float(total[1]) < 78  # fits an 80 GB H100 (78 GiB usable)


def test_the_example_real_run_passes_the_check_but_for_the_paths_it_cannot_have() -> None:
    """Run from the project root as its paths are written: the shipped sets are usable, only the checkpoints
    (not in the repository) are missing; the S3 corpus is read by the import, not by the check."""
    params = load_params(REPO / "examples" / "real-run" / "params.yaml")
    assert params.data.source == "documents" and params.data.documents.startswith("s3://")
    problems = input_problems(params, REPO)
    assert [problem.split(":")[0] for problem in problems] == ["upstream.base_path", "upstream.chat_path"], problems
