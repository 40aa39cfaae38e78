"""A CP model trained with LoRA is a peft adapter: fold it into its base model before the chat vector is added."""
from __future__ import annotations

from pathlib import Path

from pipelines.merge.checkpoint import CheckpointError

ADAPTER_CONFIG = "adapter_config.json"


def is_peft_adapter(model_dir: Path) -> bool:
    """True when the directory holds a peft adapter rather than full weights."""
    return (model_dir / ADAPTER_CONFIG).exists()


def fold_adapter(adapter_dir: Path, base_dir: Path, out_dir: Path) -> Path:
    """Load `base_dir`, apply the adapter, merge it into the weights and save full safetensors to `out_dir`.

    The adapter is applied to the merge's base model (CP continues from it); a tokenizer saved with the adapter
    (an extended vocabulary) wins over the base's, and the embeddings are resized to it first. This loads
    one whole model into memory, once.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    has_tokenizer = any((adapter_dir / name).exists() for name in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir if has_tokenizer else base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype="auto")
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    try:
        merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    except (ValueError, RuntimeError, KeyError) as error:
        raise CheckpointError(f"{adapter_dir}: cannot apply this adapter to {base_dir}: {error}") from None
    merged.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
