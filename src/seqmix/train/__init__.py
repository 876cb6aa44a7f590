"""Training: TrainConfig, the loop, and verified, atomically written checkpoints."""
from seqmix.train.checkpoint import Checkpoint, load_model
from seqmix.train.config import TrainConfig
from seqmix.train.loop import NonFiniteError, OutOfMemory, train

__all__ = ["Checkpoint", "NonFiniteError", "OutOfMemory", "TrainConfig", "load_model", "train"]
