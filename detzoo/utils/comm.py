"""Helpers for distributed (multi-process) runs; they all work, trivially, in a single process.

`_LOCAL_PROCESS_GROUP` is set by detzoo.engine.launch to the group of processes on this
machine, so `get_local_rank()` / `get_local_size()` know the per-machine layout.
"""
import functools

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["get_world_size", "get_rank", "get_local_rank", "get_local_size", "is_main_process", "synchronize",
           "all_gather", "gather", "reduce_dict", "shared_random_seed", "create_local_process_group"]

_LOCAL_PROCESS_GROUP = None
_MISSING_LOCAL_PG_ERROR = ("Local process group is not created! Use detzoo.engine.launch, or call "
                           "detzoo.utils.comm.create_local_process_group(num_workers_per_machine) after "
                           "initializing the default process group.")


def _initialized():
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if _initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if _initialized() else 0


def get_local_rank() -> int:
    """Rank of this process among the processes of its machine."""
    if not _initialized():
        return 0
    if _LOCAL_PROCESS_GROUP is None:
        raise RuntimeError(_MISSING_LOCAL_PG_ERROR)
    return dist.get_rank(group=_LOCAL_PROCESS_GROUP)


def get_local_size() -> int:
    """Number of processes on this machine."""
    if not _initialized():
        return 1
    if _LOCAL_PROCESS_GROUP is None:
        raise RuntimeError(_MISSING_LOCAL_PG_ERROR)
    return dist.get_world_size(group=_LOCAL_PROCESS_GROUP)


def is_main_process() -> bool:
    return get_rank() == 0


@functools.lru_cache()
def create_local_process_group(num_workers_per_machine: int) -> None:
    """Create the per-machine process groups (every process must call this)."""
    global _LOCAL_PROCESS_GROUP
    if _LOCAL_PROCESS_GROUP is not None:
        raise RuntimeError("the local process group exists already")
    world_size = get_world_size()
    if world_size % num_workers_per_machine != 0:
        raise ValueError(f"world size {world_size} is not a multiple of {num_workers_per_machine} processes per machine")
    machine = get_rank() // num_workers_per_machine
    for i in range(world_size // num_workers_per_machine):
        ranks = list(range(i * num_workers_per_machine, (i + 1) * num_workers_per_machine))
        group = dist.new_group(ranks)
        if i == machine:
            _LOCAL_PROCESS_GROUP = group


def synchronize():
    """Barrier across all processes (no-op in a single process)."""
    if get_world_size() == 1:
        return
    if dist.get_backend() == dist.Backend.NCCL and torch.cuda.is_available():
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


@functools.lru_cache()
def _get_global_gloo_group():
    """A gloo group over all ranks, for gathering Python objects on CPU."""
    if dist.get_backend() == "nccl":
        return dist.new_group(backend="gloo")
    return dist.group.WORLD


def all_gather(data, group=None):
    """Every process's picklable `data`, as a list indexed by rank."""
    if get_world_size() == 1:
        return [data]
    group = _get_global_gloo_group() if group is None else group
    size = dist.get_world_size(group)
    if size == 1:
        return [data]
    output = [None] * size
    dist.all_gather_object(output, data, group=group)
    return output


def gather(data, dst=0, group=None):
    """The list of every process's `data` on rank `dst`; [] on the other ranks."""
    if get_world_size() == 1:
        return [data]
    group = _get_global_gloo_group() if group is None else group
    if dist.get_world_size(group=group) == 1:
        return [data]
    if dist.get_rank(group=group) == dst:
        output = [None] * dist.get_world_size(group)
        dist.gather_object(data, output, dst=dst, group=group)
        return output
    dist.gather_object(data, None, dst=dst, group=group)
    return []


def shared_random_seed():
    """A random int drawn on rank 0 and shared with all ranks."""
    seed = np.random.randint(2**31)
    return all_gather(seed)[0]


def reduce_dict(input_dict, average=True):
    """Sum (or average) a dict of scalar tensors over all processes; the result is valid on
    rank 0 only (as in Detectron2)."""
    world_size = get_world_size()
    if world_size < 2:
        return input_dict
    with torch.no_grad():
        names = sorted(input_dict.keys())
        values = torch.stack([input_dict[k] for k in names], dim=0)
        dist.reduce(values, dst=0)
        if dist.get_rank() == 0 and average:
            values /= world_size
        return dict(zip(names, values))
