"""Training: the resumable trainer, its config, weights-only checkpoints and DDP set-up."""

from spineseg.training.config import TrainConfig
from spineseg.training.trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
