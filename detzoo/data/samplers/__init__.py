"""Index samplers of the detection loaders."""
from .distributed_sampler import (
    InferenceSampler,
    RandomSubsetTrainingSampler,
    RepeatFactorTrainingSampler,
    TrainingSampler,
)
from .grouped_batch_sampler import GroupedBatchSampler

__all__ = [
    "GroupedBatchSampler",
    "TrainingSampler",
    "RandomSubsetTrainingSampler",
    "InferenceSampler",
    "RepeatFactorTrainingSampler",
]
