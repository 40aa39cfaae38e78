"""A Hugging Face model folder checked before a stage trusts it: config, weights and tokenizer, and that they agree."""
from __future__ import annotations

from pathlib import Path

from pipelines.merge.checkpoint import CheckpointError, SafetensorsCheckpoint, require_folder
from pipelines.merge.plan import read_config, vocab_size, vocabulary_tensor_names
from pipelines.merge.vocabulary import check_tokenizer_rows, load_tokenizer


def check_model_folder(path: Path, allow_pickle: bool = False) -> str:
    """Check a local checkpoint folder: a config, readable weights (pickle only when allowed) and a tokenizer
    whose ids all have an embedding row. Return its model type; the error names the file or tensor at fault."""
    require_folder(path)
    config = read_config(path)
    with SafetensorsCheckpoint(path, allow_pickle) as checkpoint:
        names = sorted(vocabulary_tensor_names(checkpoint, config))
        if not names:
            raise CheckpointError(f"{path}: no embedding tensor with the config's vocab_size "
                                  f"({vocab_size(config)}) rows")
        check_tokenizer_rows(path, load_tokenizer(path), names[0], checkpoint.shape(names[0])[0])
    return str(config.get("model_type"))
