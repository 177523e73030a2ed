"""Batching of sampled indices by group (e.g. landscape / portrait images)."""
from typing import Iterator, List, Sequence

import numpy as np
from torch.utils.data.sampler import BatchSampler, Sampler

__all__ = ["GroupedBatchSampler"]


class GroupedBatchSampler(BatchSampler):
    """Batches of indices from `sampler` in which all indices belong to the same group.

    Each group buffers the indices it receives and releases them as a batch once it holds
    `batch_size`, so batches follow the sampler's order as closely as grouping allows.
    Incomplete batches are never released.
    """

    def __init__(self, sampler: Sampler, group_ids: Sequence[int], batch_size: int):
        """
        Args:
            sampler (Sampler): yields indices in [0, N).
            group_ids (list[int]): the group of each of the N elements.
            batch_size (int): indices per batch.
        """
        if not isinstance(sampler, Sampler):
            raise ValueError(f"GroupedBatchSampler needs a torch Sampler, got {type(sampler).__name__}")
        group_ids = np.asarray(group_ids)
        if group_ids.ndim != 1:
            raise ValueError(f"group_ids must be 1-D (one group per element), got shape {group_ids.shape}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.sampler = sampler
        self.group_ids = group_ids
        self.batch_size = batch_size
        self.buffer_per_group = {int(k): [] for k in np.unique(group_ids)}

    def __iter__(self) -> Iterator[List[int]]:
        for idx in self.sampler:
            buffer = self.buffer_per_group[int(self.group_ids[idx])]
            buffer.append(idx)
            if len(buffer) == self.batch_size:
                yield buffer[:]
                del buffer[:]

    def __len__(self) -> int:
        # TypeError (Detectron2 raises NotImplementedError) is what len() of an unsized
        # object raises, and lets list(sampler) work
        raise TypeError("len() of GroupedBatchSampler is not defined: it depends on the grouping")
