"""Environment helpers: seeding every RNG, and the environment report printed at start-up."""
import importlib
import logging
import os
import platform
import random
import subprocess
import sys
from datetime import datetime

import numpy as np
import torch
from tabulate import tabulate

__all__ = ["seed_all_rng", "collect_env_info", "TORCH_VERSION"]

TORCH_VERSION = tuple(int(x) for x in torch.__version__.split(".")[:2])


def seed_all_rng(seed=None):
    """Seed Python, numpy and torch. With seed None a strong random seed is drawn (and logged)."""
    if seed is None:
        seed = os.getpid() + int(datetime.now().strftime("%S%f")) + int.from_bytes(os.urandom(2), "big")
        logging.getLogger(__name__).info(f"Using a generated random seed {seed}")
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    return seed


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module):
    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except ImportError:
        return "not installed"


def collect_env_info():
    """A table of the versions and hardware a run depends on (logged by default_setup)."""
    import detzoo

    rows = [("sys.platform", sys.platform), ("Python", sys.version.replace("\n", "")),
            ("numpy", np.__version__), ("detzoo", f"{detzoo.__version__} @{os.path.dirname(detzoo.__file__)}")]
    try:
        from detzoo import _C

        rows.append(("detzoo._C", f"built with torch {_C.built_with_torch}, CUDA kernels: {bool(_C.with_cuda)}"))
    except ImportError as e:
        rows.append(("detzoo._C", f"not built ({e})"))
    rows += [("PyTorch", f"{torch.__version__} @{os.path.dirname(torch.__file__)}"),
             ("PyTorch debug build", torch.version.debug), ("CPU", _cpu_model()),
             ("CPU threads", torch.get_num_threads()), ("CUDA available", torch.cuda.is_available())]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            rows.append((f"GPU {i}", torch.cuda.get_device_name(i)))
        rows.append(("CUDA (torch)", torch.version.cuda))
    for module in ("torchvision", "fvcore", "iopath", "pycocotools", "cv2"):
        rows.append((module, _version(module)))
    try:
        rows.append(("gcc", subprocess.check_output(["c++", "--version"], text=True).splitlines()[0]))
    except (OSError, subprocess.CalledProcessError):
        rows.append(("gcc", "not found"))
    return tabulate(rows)
