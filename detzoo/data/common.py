"""Dataset wrappers of the loaders: a list as a dataset (stored so loader workers share it),
mapping, conversion to an iterable dataset, and aspect-ratio batching."""
import contextlib
import copy
import itertools
import logging
import pickle
import random
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.utils.data as data
from torch.utils.data.sampler import Sampler

__all__ = ["MapDataset", "DatasetFromList", "AspectRatioGroupedDataset", "ToIterableDataset",
           "NumpySerializedList", "set_default_dataset_from_list_serialize_method"]

logger = logging.getLogger(__name__)


def _shard_iterator_dataloader_worker(iterable: Iterable, chunk_size: int = 1) -> Iterator:
    """Inside DataLoader worker w of W, keep chunks w, w + W, w + 2W, ... of `chunk_size`
    consecutive items; outside workers keep everything.

    With chunk_size = batch size each worker makes whole batches of consecutive items, and the
    loader, which takes one batch from each worker in turn, yields them in the sampler's order.
    """
    worker_info = data.get_worker_info()
    if worker_info is None or worker_info.num_workers == 1:
        yield from iterable
        return
    period = worker_info.num_workers * chunk_size
    first, last = worker_info.id * chunk_size, (worker_info.id + 1) * chunk_size
    for i, item in enumerate(iterable):
        if first <= i % period < last:
            yield item


class _MapIterableDataset(data.IterableDataset):
    """`map_func` over an iterable dataset; elements it maps to None are skipped."""

    def __init__(self, dataset: data.IterableDataset, map_func: Callable):
        self._dataset = dataset
        self._map_func = map_func

    def __len__(self) -> int:
        return len(self._dataset)

    def __iter__(self) -> Iterator:
        for mapped in map(self._map_func, self._dataset):
            if mapped is not None:
                yield mapped


class MapDataset(data.Dataset):
    """`map_func` over a dataset.

    When `map_func` returns None (e.g. an image whose annotations all got cropped away) a map-style
    dataset tries another, random, element instead, and logs a warning from the third failure in
    a row; an iterable dataset skips the element.
    """

    def __new__(cls, dataset, map_func):
        if isinstance(dataset, data.IterableDataset):
            return _MapIterableDataset(dataset, map_func)
        return super().__new__(cls)

    def __init__(self, dataset, map_func: Callable):
        """
        Args:
            dataset: map-style or iterable dataset (an iterable one gives an iterable result).
            map_func (callable): element -> mapped element, or None to skip.
        """
        self._dataset = dataset
        self._map_func = map_func
        self._rng = random.Random(42)
        self._failed = set()  # indices whose last mapping returned None

    def __getnewargs__(self):
        return self._dataset, self._map_func

    def __len__(self) -> int:
        return len(self._dataset)

    def _other_index(self) -> int:
        for _ in range(100):
            idx = self._rng.randrange(len(self))
            if idx not in self._failed:
                return idx
        candidates = sorted(set(range(len(self))) - self._failed)
        if not candidates:
            raise RuntimeError(f"MapDataset: the map function returned None for all {len(self)} elements")
        return self._rng.choice(candidates)

    def __getitem__(self, idx: int) -> Any:
        cur_idx = int(idx)
        for retry in itertools.count(1):
            mapped = self._map_func(self._dataset[cur_idx])
            if mapped is not None:
                self._failed.discard(cur_idx)
                return mapped
            self._failed.add(cur_idx)
            if retry >= 3:
                logger.warning(f"MapDataset: map function returned None for index {idx}; {retry} retries so far")
            cur_idx = self._other_index()


def _rebuild_serialized_list(buffer: torch.Tensor, addr: torch.Tensor) -> "NumpySerializedList":
    obj = NumpySerializedList.__new__(NumpySerializedList)
    obj._shared = (buffer, addr)
    obj._buffer, obj._addr = buffer.numpy(), addr.numpy()
    return obj


class NumpySerializedList:
    """A read-only list stored as ONE numpy uint8 buffer of concatenated pickles plus an int64
    array of end offsets.

    A Python list of dicts is millions of objects; every read in a forked loader worker writes
    their reference counts, which copies the pages they sit on into the worker ("copy-on-read"),
    so each worker's memory grows towards a full copy of the dataset. Two arrays have two
    objects: reads unpickle a fresh copy of one item and touch no shared page.

    Pickling (spawn / forkserver workers) goes through torch tensors, which torch's
    multiprocessing moves to shared memory instead of copying. The first pickling moves both
    arrays into shared memory once and keeps the tensors for the object's lifetime: a shared
    tensor made afresh for each pickling would die (closing its file descriptor) before the
    worker process starts, and the worker would be handed a closed or reused descriptor.
    """

    def __init__(self, lst: List[Any]):
        logger.info(f"Serializing {len(lst)} elements to byte tensors and concatenating them all ...")
        blobs = [np.frombuffer(pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8) for x in lst]
        self._addr = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self._buffer = np.concatenate(blobs) if blobs else np.zeros(0, dtype=np.uint8)
        self._shared: Optional[Tuple[torch.Tensor, torch.Tensor]] = None  # made by the first pickling
        logger.info(f"Serialized dataset takes {len(self._buffer) / 1024**2:.2f} MiB")

    def __len__(self) -> int:
        return len(self._addr)

    def __getitem__(self, idx: int) -> Any:
        n = len(self._addr)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} out of range for a list of {n} elements")
        idx = int(idx) % n
        start = int(self._addr[idx - 1]) if idx > 0 else 0
        return pickle.loads(memoryview(self._buffer[start:int(self._addr[idx])]))

    def __reduce__(self):
        if self._shared is None:
            buffer, addr = torch.from_numpy(self._buffer), torch.from_numpy(self._addr)
            # Both move into shared memory (copied once); reads then go to the shared copies and
            # the private arrays are freed.
            self._shared = (buffer.share_memory_(), addr.share_memory_())
            self._buffer, self._addr = buffer.numpy(), addr.numpy()
        return _rebuild_serialized_list, self._shared


_DEFAULT_SERIALIZE_METHOD: Callable[[list], Any] = NumpySerializedList


@contextlib.contextmanager
def set_default_dataset_from_list_serialize_method(new: Callable[[list], Any]):
    """Within the block, DatasetFromList(serialize=True) stores lists with `new(lst)`."""
    global _DEFAULT_SERIALIZE_METHOD
    previous = _DEFAULT_SERIALIZE_METHOD
    _DEFAULT_SERIALIZE_METHOD = new
    try:
        yield
    finally:
        _DEFAULT_SERIALIZE_METHOD = previous


class DatasetFromList(data.Dataset):
    """A list as a map-style dataset."""

    def __init__(self, lst: list, copy: bool = True, serialize: Union[bool, Callable] = True):
        """
        Args:
            lst (list): the elements.
            copy (bool): return deep copies, so callers can modify what they get (serialized
                storage always returns fresh objects).
            serialize (bool or callable): store the list serialized (`NumpySerializedList`, or
                the result of calling `serialize(lst)`), which keeps loader workers from each
                growing a copy of it.
        """
        if not isinstance(serialize, bool) and not callable(serialize):
            raise TypeError(f"DatasetFromList: serialize must be a bool or a callable, got {type(serialize).__name__}")
        self._copy = copy
        self._serialize = serialize is not False
        if self._serialize:
            method = serialize if callable(serialize) else _DEFAULT_SERIALIZE_METHOD
            self._lst = method(lst)
        else:
            self._lst = lst

    def __len__(self) -> int:
        return len(self._lst)

    def __getitem__(self, idx: int) -> Any:
        if self._copy and not self._serialize:
            return copy.deepcopy(self._lst[idx])
        return self._lst[idx]


class ToIterableDataset(data.IterableDataset):
    """A map-style dataset read in the order of a sampler, as an iterable dataset."""

    def __init__(self, dataset: data.Dataset, sampler: Sampler, shard_sampler: bool = True,
                 shard_chunk_size: int = 1):
        """
        Args:
            dataset: map-style dataset.
            sampler: cheap iterable of indices (every loader worker runs it in full).
            shard_sampler (bool): give each loader worker its own share of the indices; leave
                True unless the sampler already yields different indices per worker.
            shard_chunk_size (int): the share is made of chunks of this many consecutive
                indices (the batch size keeps batches in sampler order).
        """
        if isinstance(dataset, data.IterableDataset):
            raise TypeError("ToIterableDataset needs a map-style dataset, got an IterableDataset")
        if not isinstance(sampler, Sampler):
            raise TypeError(f"ToIterableDataset needs a torch Sampler, got {type(sampler).__name__}")
        self.dataset = dataset
        self.sampler = sampler
        self.shard_sampler = shard_sampler
        self.shard_chunk_size = shard_chunk_size

    def __iter__(self) -> Iterator:
        indices = self.sampler
        if self.shard_sampler:
            indices = _shard_iterator_dataloader_worker(self.sampler, self.shard_chunk_size)
        for idx in indices:
            yield self.dataset[idx]

    def __len__(self) -> int:
        return len(self.sampler)


class AspectRatioGroupedDataset(data.IterableDataset):
    """Batch elements so that each batch holds only landscape (w > h) or only portrait
    (w <= h) images, which saves padding. Elements are dicts with "width" and "height"; yields
    lists of `batch_size` of them."""

    def __init__(self, dataset: Iterable, batch_size: int):
        """
        Args:
            dataset: iterable of dicts with "width" and "height".
            batch_size (int):
        """
        self.dataset = dataset
        self.batch_size = batch_size
        self._buckets = [[] for _ in range(2)]

    def __iter__(self) -> Iterator[list]:
        for d in self.dataset:
            bucket = self._buckets[0 if d["width"] > d["height"] else 1]
            bucket.append(d)
            if len(bucket) == self.batch_size:
                batch = bucket[:]
                del bucket[:]  # before the yield: code after it may never run
                yield batch
