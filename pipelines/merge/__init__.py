"""The chat-vector merge engine, used by the `merge` stage."""
from pipelines.merge.chat_vector import TensorReport, merge_chat_vector
from pipelines.merge.checkpoint import CheckpointError

__all__ = ["merge_chat_vector", "TensorReport", "CheckpointError"]
