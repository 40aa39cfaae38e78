"""Causal-LM training shared by the tiny upstream models and continual pretraining: data shaping and the Trainer."""
from pipelines.training.data import assistant_only_examples, pack_texts, text_dataset
from pipelines.training.trainer import Checkpointing, TrainResult, train_causal_lm

__all__ = ["assistant_only_examples", "pack_texts", "text_dataset", "train_causal_lm", "Checkpointing", "TrainResult"]
