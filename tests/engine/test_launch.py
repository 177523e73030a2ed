"""launch(): gloo processes on CPU, several "machines" on loopback, failing workers, and
the torchrun / SLURM environments."""
import concurrent.futures
import os
import subprocess
import sys
import textwrap
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from detzoo.engine import SimpleTrainer, launch
from detzoo.engine.launch import _find_free_port, _launcher_environment, first_host_of_slurm_nodelist
from detzoo.utils import comm

from . import CyclingLoader, TinyRegressor, make_batches, split_batches

STEPS = 4
TOTAL_BATCH = 4


def _single_process_weights():
    model = TinyRegressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    SimpleTrainer(model, CyclingLoader(make_batches(STEPS, TOTAL_BATCH)), optimizer).train(0, STEPS)
    return model.state_dict()


# ------------------------------------------------------------- workers (run in children)
def _train_worker(out_dir):
    """Train on this rank's share of each batch; save the weights and the layout."""
    from detzoo.engine.defaults import create_ddp_model

    world_size, rank = comm.get_world_size(), comm.get_rank()
    shards = split_batches(make_batches(STEPS, TOTAL_BATCH), world_size)[rank::world_size]
    model = create_ddp_model(TinyRegressor(), broadcast_buffers=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    SimpleTrainer(model, CyclingLoader(shards), optimizer).train(0, STEPS)
    layout = {"world_size": world_size, "local_rank": comm.get_local_rank(), "local_size": comm.get_local_size(),
              "backend": dist.get_backend()}
    torch.save({"weights": model.module.state_dict(), "layout": layout}, os.path.join(out_dir, f"rank{rank}.pt"))


def _failing_worker(failing_rank):
    if comm.get_rank() == failing_rank:
        raise ValueError(f"worker {failing_rank} failed on purpose")
    dist.barrier()  # waits for the failed worker: must not hang


# ---------------------------------------------------------------------------- tests
def _check_trained_like_one_process(out_dir, world_size, local_size):
    expected = _single_process_weights()
    for rank in range(world_size):
        saved = torch.load(os.path.join(out_dir, f"rank{rank}.pt"), weights_only=False)
        assert saved["layout"] == {"world_size": world_size, "local_rank": rank % local_size,
                                   "local_size": local_size, "backend": "gloo"}
        for name, value in expected.items():
            torch.testing.assert_close(saved["weights"][name], value, rtol=1e-5, atol=1e-6)


def test_two_gloo_processes_train_like_one_with_the_same_total_batch(tmp_path):
    launch(_train_worker, 2, dist_url="auto", args=(str(tmp_path),))
    _check_trained_like_one_process(tmp_path, world_size=2, local_size=2)


def _launch_machines(worker, args, timeout=timedelta(minutes=1)):
    """Two "machines" of one process each, as two launch() calls; their exceptions."""
    url = f"tcp://127.0.0.1:{_find_free_port()}"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(launch, worker, 1, num_machines=2, machine_rank=r, dist_url=url, args=args,
                               timeout=timeout) for r in range(2)]
        return [f.exception(timeout=120) for f in futures]


def test_two_machines_on_loopback(tmp_path):
    assert _launch_machines(_train_worker, (str(tmp_path),)) == [None, None]
    _check_trained_like_one_process(tmp_path, world_size=2, local_size=1)


def test_a_failing_worker_stops_the_others_within_the_timeout():
    start = time.monotonic()
    with pytest.raises(Exception, match="worker 1 failed on purpose"):
        launch(_failing_worker, 2, dist_url="auto", args=(1,), timeout=timedelta(seconds=30))
    # On another machine, the survivor's collective fails when its peer is gone.
    errors = _launch_machines(_failing_worker, (0,), timeout=timedelta(seconds=30))
    assert "worker 0 failed on purpose" in str(errors[0])
    assert errors[1] is not None
    assert time.monotonic() - start < 60


def test_single_process_runs_in_place():
    calls = []
    launch(calls.append, 1, args=("ran",))
    assert calls == ["ran"]
    assert not dist.is_initialized()


def test_bad_arguments():
    with pytest.raises(ValueError, match="only works on one machine"):
        launch(print, 1, num_machines=2, dist_url="auto")
    with pytest.raises(ValueError, match="machine_rank must be in"):
        launch(print, 1, num_machines=2, machine_rank=2, dist_url="tcp://127.0.0.1:1")


# ---------------------------------------------------------------- torchrun and SLURM
_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                  "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NNODES", "SLURM_NODEID",
                  "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_ID", "SLURM_JOB_NUM_NODES")


@pytest.fixture
def clean_env(monkeypatch):
    for var in _LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_no_launcher_environment(clean_env):
    assert _launcher_environment() is None
    clean_env.setenv("SLURM_PROCID", "0")
    clean_env.setenv("SLURM_NTASKS", "1")  # a plain sbatch job: launch() spawns as usual
    assert _launcher_environment() is None


def test_torchrun_environment(clean_env):
    for var, value in {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}.items():
        clean_env.setenv(var, value)
    layout = _launcher_environment()
    assert (layout.rank, layout.world_size, layout.local_rank, layout.local_world_size) == (5, 8, 1, 4)
    assert layout.dist_url("tcp://127.0.0.1:1") == "env://"


def test_slurm_one_task_per_process(clean_env):
    for var, value in {"SLURM_PROCID": "6", "SLURM_NTASKS": "8", "SLURM_LOCALID": "2", "SLURM_NNODES": "2",
                       "SLURM_JOB_NODELIST": "gpu[017-018]", "SLURM_JOB_ID": "4242"}.items():
        clean_env.setenv(var, value)
    layout = _launcher_environment()
    assert (layout.rank, layout.world_size, layout.local_rank, layout.local_world_size) == (6, 8, 2, 4)
    assert layout.spawn_per_node is None
    expected_url = f"tcp://gpu017:{15000 + 4242 % 20000}"
    assert layout.dist_url("auto") == expected_url
    assert layout.dist_url("tcp://127.0.0.1:5000") == expected_url  # loopback cannot span nodes
    assert layout.dist_url("tcp://10.1.2.3:5000") == "tcp://10.1.2.3:5000"  # explicit wins
    clean_env.setenv("MASTER_ADDR", "head")
    clean_env.setenv("MASTER_PORT", "29500")
    assert _launcher_environment().dist_url(None) == "tcp://head:29500"


def test_slurm_one_task_per_node(clean_env):
    for var, value in {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_NNODES": "2", "SLURM_NODEID": "1",
                       "SLURM_NODELIST": "a1,b7"}.items():
        clean_env.setenv(var, value)
    layout = _launcher_environment()
    assert layout.spawn_per_node == (2, 1)
    assert layout.master_addr == "a1"


@pytest.mark.parametrize("node_list, first", [
    ("node7", "node7"), ("gpu[003-005,010],cpu1", "gpu003"), ("a1,b[1-2]", "a1"),
    ("rack[1-2]-n[07-08]", "rack1-n07"), ("x[5,2]", "x5"),
])
def test_first_host_of_slurm_nodelist(node_list, first):
    assert first_host_of_slurm_nodelist(node_list) == first


_TORCHRUN_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from detzoo.engine import launch
from tests.engine.test_launch import _train_worker
launch(_train_worker, 2, args=({out!r},))
"""


@pytest.mark.slow
def test_torchrun_env_init(tmp_path):
    script = tmp_path / "run.py"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script.write_text(textwrap.dedent(_TORCHRUN_SCRIPT.format(root=root, out=str(tmp_path))))
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                    str(_find_free_port()), str(script)], check=True, env=env, timeout=300)
    _check_trained_like_one_process(tmp_path, world_size=2, local_size=2)
