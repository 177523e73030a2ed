"""Start distributed training: one process per GPU (or, without GPUs, per requested CPU
worker), on one machine or several.

Three ways in, all ending in the same initialized process group:

* `launch(main, num_gpus_per_machine, num_machines, machine_rank, dist_url)` spawns the
  processes of this machine itself (Detectron2's way), NCCL on GPUs and gloo on CPU;
* under `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK in the environment) every process is
  already started: `launch` only joins it to the group (env://);
* under SLURM (`srun`), with one task per process (SLURM_NTASKS = processes in all) each
  task joins as rank SLURM_PROCID, or with one task per node each node spawns its processes;
  the first node of the job is the rendezvous host.
"""
import logging
import os
import re
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detzoo.utils import comm

__all__ = ["DEFAULT_TIMEOUT", "launch"]

logger = logging.getLogger(__name__)

# How long a collective may wait for the other processes before failing.
DEFAULT_TIMEOUT = timedelta(minutes=30)


def _find_free_port() -> int:
    """A TCP port free right now on this machine (it could be taken before it is used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def launch(main_func: Callable, num_gpus_per_machine: int, num_machines: int = 1, machine_rank: int = 0,
           dist_url: Optional[str] = None, args=(), timeout: timedelta = DEFAULT_TIMEOUT):
    """Run `main_func(*args)` in every process of a distributed job.

    Args:
        main_func: the function each process runs.
        num_gpus_per_machine (int): processes per machine: one per GPU, or CPU workers when
            there is no GPU (they then use gloo).
        num_machines (int): machines in the job.
        machine_rank (int): this machine's rank, in [0, num_machines).
        dist_url (str): the rendezvous: "tcp://<machine 0 address>:<port>" for several
            machines; "auto" or None picks a free port on this machine (one machine only).
        args (tuple): arguments of `main_func`.
        timeout (timedelta): how long a collective waits; after it, processes waiting on a
            dead peer fail instead of hanging.

    When started by torchrun or by SLURM with several tasks, the process layout comes from
    the environment, and the count arguments are only checked against it.
    """
    external = _launcher_environment()
    if external is not None and external.spawn_per_node is None:
        _check_layout_against_environment(external, num_gpus_per_machine, num_machines)
        _run_worker(main_func, args, external.rank, external.local_rank, external.world_size,
                    external.local_world_size, external.dist_url(dist_url), timeout)
        return
    if external is not None:  # SLURM with one task per node: spawn this node's processes
        num_machines, machine_rank = external.spawn_per_node
        dist_url = external.dist_url(dist_url)
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        main_func(*args)
        return
    if not 0 <= machine_rank < num_machines:
        raise ValueError(f"machine_rank must be in [0, {num_machines}), got {machine_rank}")
    if dist_url in (None, "auto"):
        if num_machines > 1:
            raise ValueError(f"dist_url={dist_url!r} only works on one machine; with {num_machines} machines "
                             "pass tcp://<address of machine 0>:<port>, the same on every machine")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// rendezvous across machines needs a file system shared by all of them")
    mp.start_processes(_distributed_worker, nprocs=num_gpus_per_machine,
                       args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
                       daemon=False)


def _distributed_worker(local_rank, main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args,
                        timeout=DEFAULT_TIMEOUT):
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    _run_worker(main_func, args, global_rank, local_rank, world_size, num_gpus_per_machine, dist_url, timeout)


def _run_worker(main_func, args, rank, local_rank, world_size, local_world_size, dist_url, timeout):
    _init_process_group(rank, local_rank, world_size, local_world_size, dist_url, timeout)
    main_func(*args)
    dist.destroy_process_group()


def _init_process_group(rank, local_rank, world_size, local_world_size, dist_url, timeout):
    has_gpu = torch.cuda.is_available()
    if has_gpu:
        if local_world_size > torch.cuda.device_count():
            raise ValueError(f"{local_world_size} processes per machine but only {torch.cuda.device_count()} GPUs "
                             "are visible")
        torch.cuda.set_device(local_rank)
    elif "OMP_NUM_THREADS" not in os.environ:
        # CPU workers on one machine would otherwise each start a thread per core.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world_size))
    backend = "nccl" if has_gpu else "gloo"
    try:
        dist.init_process_group(backend=backend, init_method=dist_url, world_size=world_size, rank=rank,
                                timeout=timeout)
    except Exception:
        logger.error(f"process group URL: {dist_url} (backend {backend}, rank {rank} of {world_size})")
        raise
    comm.create_local_process_group(local_world_size)
    comm.synchronize()


# ------------------------------------------------------------------ external launchers
@dataclass
class _ExternalLayout:
    """The process layout set by torchrun or SLURM."""

    launcher: str
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    master_addr: Optional[str] = None
    master_port: Optional[int] = None
    # SLURM with one task per node: (num_machines, machine_rank) to spawn with.
    spawn_per_node: Optional[tuple] = None

    def dist_url(self, requested: Optional[str]) -> str:
        if self.launcher == "torchrun":
            return "env://"
        if requested not in (None, "auto", "env://") and not _is_loopback_url(requested):
            return requested
        return f"tcp://{self.master_addr}:{self.master_port}"


def _is_loopback_url(url: str) -> bool:
    return url.startswith(("tcp://127.", "tcp://localhost:"))


def _launcher_environment() -> Optional[_ExternalLayout]:
    """The layout of a job started by torchrun or SLURM, or None when launch() must spawn."""
    env = os.environ
    if all(key in env for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        world_size = int(env["WORLD_SIZE"])
        local_world_size = int(env.get("LOCAL_WORLD_SIZE", world_size))
        return _ExternalLayout("torchrun", int(env["RANK"]), int(env["LOCAL_RANK"]), world_size, local_world_size)
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return _slurm_layout(env)
    return None


def _slurm_layout(env) -> _ExternalLayout:
    ntasks = int(env["SLURM_NTASKS"])
    nnodes = int(env.get("SLURM_NNODES", env.get("SLURM_JOB_NUM_NODES", "1")))
    node_list = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not node_list:
        raise RuntimeError("SLURM_NTASKS > 1 but SLURM_JOB_NODELIST is not set: cannot find the rendezvous host")
    master_addr = env.get("MASTER_ADDR") or first_host_of_slurm_nodelist(node_list)
    # Every task derives the same port from the job id, unless MASTER_PORT says otherwise.
    master_port = int(env.get("MASTER_PORT", 15000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
    layout = _ExternalLayout("slurm", int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", "0")), ntasks,
                             ntasks // nnodes, master_addr, master_port)
    if ntasks == nnodes:
        layout.spawn_per_node = (nnodes, int(env.get("SLURM_NODEID", env["SLURM_PROCID"])))
    return layout


def _check_layout_against_environment(layout: _ExternalLayout, num_gpus_per_machine: int, num_machines: int):
    requested = num_gpus_per_machine * num_machines
    if requested != layout.world_size:
        logger.warning(f"{layout.launcher} started {layout.world_size} processes "
                       f"({layout.local_world_size} per machine); the requested {num_machines} machine(s) x "
                       f"{num_gpus_per_machine} process(es) are ignored")


_BRACKET = re.compile(r"\[([^\]]*)\]")


def first_host_of_slurm_nodelist(node_list: str) -> str:
    """The first host name of a SLURM node list in its compressed form.

    "gpu[003-005,010],cpu1" -> "gpu003"; "rack[1-2]-n[07-08]" -> "rack1-n07"; "node7" -> "node7".
    """
    depth, end = 0, len(node_list)
    for i, char in enumerate(node_list):
        depth += char == "["
        depth -= char == "]"
        if char == "," and depth == 0:
            end = i
            break
    first = node_list[:end].strip()
    if not first:
        raise ValueError(f"empty SLURM node list {node_list!r}")
    return _BRACKET.sub(lambda m: m.group(1).split(",")[0].split("-")[0], first)
