"""Training stages: `TrainStage` (the shape of every train_* stage) and `resolve_model_ref` (a stored trained
model as a local folder, for encoders)."""

from cirflow.tasks.training.model_ref import find_trained, resolve_model_ref
from cirflow.tasks.training.train import TrainParams, TrainRuntime, TrainStage

__all__ = ["TrainParams", "TrainRuntime", "TrainStage", "find_trained", "resolve_model_ref"]
