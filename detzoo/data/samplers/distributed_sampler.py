"""Samplers that share one index stream among the processes of a distributed run.

Training samplers are infinite: every process draws the same seeded stream (the seed comes
from rank 0 through `comm.shared_random_seed`) and keeps every world_size-th index starting at
its rank, so the processes see disjoint samples without communicating. The inference sampler
splits the dataset into contiguous shards, one per process, covering it exactly once.
"""
import itertools
import logging
import math
from collections import defaultdict
from typing import Any, Dict, Iterator, List, Optional

import torch
from torch.utils.data.sampler import Sampler

from detzoo.utils import comm

__all__ = ["TrainingSampler", "RandomSubsetTrainingSampler", "RepeatFactorTrainingSampler", "InferenceSampler"]

logger = logging.getLogger(__name__)


def _check_size(size: Any, owner: str) -> None:
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"{owner}(size=) expects an int, got {type(size).__name__}")
    if size <= 0:
        raise ValueError(f"{owner}(size=) expects a positive int, got {size} (is the dataset empty?)")


def _shared_seed(seed: Optional[int]) -> int:
    return int(comm.shared_random_seed() if seed is None else seed)


class TrainingSampler(Sampler):
    """Infinite stream of indices: `shuffle(range(size)) + shuffle(range(size)) + ...` (or
    `range(size)` repeated when not shuffling), of which this process takes the elements
    rank, rank + world_size, rank + 2 * world_size, ..."""

    def __init__(self, size: int, shuffle: bool = True, seed: Optional[int] = None):
        """
        Args:
            size (int): dataset size.
            shuffle (bool): shuffle each pass.
            seed (int): shuffle seed, the same on every process; None draws one on rank 0 and
                shares it (all processes must then construct the sampler together).
        """
        _check_size(size, type(self).__name__)
        self._size = size
        self._shuffle = shuffle
        self._seed = _shared_seed(seed)
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()

    def __iter__(self) -> Iterator[int]:
        yield from itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)

    def _infinite_indices(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            if self._shuffle:
                yield from torch.randperm(self._size, generator=g).tolist()
            else:
                yield from range(self._size)


class RandomSubsetTrainingSampler(TrainingSampler):
    """TrainingSampler over a fixed random subset of `int(size * subset_ratio)` indices (to
    study accuracy against the amount of training data)."""

    def __init__(self, size: int, subset_ratio: float, shuffle: bool = True,
                 seed_shuffle: Optional[int] = None, seed_subset: Optional[int] = None):
        """
        Args:
            size (int): dataset size.
            subset_ratio (float): fraction in (0, 1] of the dataset to use.
            shuffle (bool): shuffle the subset on each pass.
            seed_shuffle (int): as TrainingSampler's seed.
            seed_subset (int): seed of the subset choice; None shares one drawn on rank 0.
        """
        super().__init__(size=size, shuffle=shuffle, seed=seed_shuffle)
        if not 0.0 < subset_ratio <= 1.0:
            raise ValueError(f"RandomSubsetTrainingSampler: subset_ratio must be in (0, 1], got {subset_ratio}")
        self._size_subset = int(size * subset_ratio)
        if self._size_subset == 0:
            raise ValueError(f"RandomSubsetTrainingSampler: {subset_ratio} of {size} elements is an empty subset")
        self._seed_subset = _shared_seed(seed_subset)
        g = torch.Generator()
        g.manual_seed(self._seed_subset)
        self._indexes_subset = torch.randperm(self._size, generator=g)[: self._size_subset]
        logger.info(f"Using RandomSubsetTrainingSampler: {self._size_subset} of {self._size} elements")

    def _infinite_indices(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            if self._shuffle:
                yield from self._indexes_subset[torch.randperm(self._size_subset, generator=g)].tolist()
            else:
                yield from self._indexes_subset.tolist()


class RepeatFactorTrainingSampler(Sampler):
    """TrainingSampler where element i appears `repeat_factors[i]` times per pass on average
    (the fractional part is rounded stochastically each pass), e.g. to oversample images of
    rare classes (LVIS)."""

    def __init__(self, repeat_factors: torch.Tensor, *, shuffle: bool = True, seed: Optional[int] = None):
        """
        Args:
            repeat_factors (Tensor[N]): float, >= 0; all ones is TrainingSampler(N).
            shuffle (bool): shuffle each pass.
            seed (int): as TrainingSampler's seed.
        """
        repeat_factors = torch.as_tensor(repeat_factors, dtype=torch.float32)
        if repeat_factors.dim() != 1 or len(repeat_factors) == 0:
            raise ValueError(
                f"RepeatFactorTrainingSampler: repeat_factors must be a non-empty 1-D tensor, got shape "
                f"{tuple(repeat_factors.shape)}"
            )
        if bool((repeat_factors < 0).any()) or not bool((repeat_factors > 0).any()):
            raise ValueError("RepeatFactorTrainingSampler: repeat_factors must be >= 0, and not all 0")
        self._shuffle = shuffle
        self._seed = _shared_seed(seed)
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()
        self._int_part = torch.trunc(repeat_factors)
        self._frac_part = repeat_factors - self._int_part

    @staticmethod
    def repeat_factors_from_category_frequency(dataset_dicts: List[Dict[str, Any]], repeat_thresh: float,
                                               sqrt: bool = True) -> torch.Tensor:
        """Per-image repeat factors from category frequencies (LVIS paper, appendix B.2).

        With f(c) the fraction of images that contain category c, a category's factor is
        r(c) = max(1, sqrt(t / f(c))) (or t / f(c) when not `sqrt`), and an image's factor is
        the largest r(c) over its categories (1 for an image without annotations).

        Args:
            dataset_dicts (list[dict]): Detectron2's dataset format.
            repeat_thresh (float): t, the frequency below which images get repeated.
            sqrt (bool): take the square root of t / f(c).

        Returns:
            Tensor[len(dataset_dicts)] float32.
        """
        image_categories = [{ann["category_id"] for ann in d["annotations"]} for d in dataset_dicts]
        images_per_category = defaultdict(int)
        for categories in image_categories:
            for cat_id in categories:
                images_per_category[cat_id] += 1
        num_images = len(dataset_dicts)
        category_rep = {}
        for cat_id, count in images_per_category.items():
            ratio = repeat_thresh / (count / num_images)
            category_rep[cat_id] = max(1.0, math.sqrt(ratio) if sqrt else ratio)
        factors = [max((category_rep[c] for c in categories), default=1.0) for categories in image_categories]
        return torch.tensor(factors, dtype=torch.float32)

    def _get_epoch_indices(self, generator: torch.Generator) -> torch.Tensor:
        """Indices of one pass: index i repeated floor(r_i) times, plus once more with
        probability frac(r_i)."""
        rands = torch.rand(len(self._frac_part), generator=generator)
        repeats = (self._int_part + (rands < self._frac_part).float()).to(torch.int64)
        return torch.repeat_interleave(torch.arange(len(repeats)), repeats)

    def __iter__(self) -> Iterator[int]:
        yield from itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)

    def _infinite_indices(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            indices = self._get_epoch_indices(g)
            if self._shuffle:
                indices = indices[torch.randperm(len(indices), generator=g)]
            yield from indices.tolist()


class InferenceSampler(Sampler):
    """Each index exactly once across processes: process r gets a contiguous shard, the shard
    sizes differing by at most one."""

    def __init__(self, size: int):
        """
        Args:
            size (int): dataset size.
        """
        _check_size(size, type(self).__name__)
        self._size = size
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()
        self._local_indices = self._get_local_indices(size, self._world_size, self._rank)

    @staticmethod
    def _get_local_indices(total_size: int, world_size: int, rank: int) -> range:
        shard_size, left = divmod(total_size, world_size)
        begin = rank * shard_size + min(rank, left)
        return range(begin, begin + shard_size + (1 if rank < left else 0))

    def __iter__(self) -> Iterator[int]:
        yield from self._local_indices

    def __len__(self) -> int:
        return len(self._local_indices)
