"""The chat-vector merge engine, used by the `merge` stage and by `chatgraft merge`."""
from pipelines.merge.chat_vector import MergeReport, TensorReport, merge_chat_vector
from pipelines.merge.checkpoint import CheckpointError

__all__ = ["merge_chat_vector", "MergeReport", "TensorReport", "CheckpointError"]
