"""Environment helpers: seeding every RNG, and the torch version as a tuple. (The environment
report printed at start-up is in collect_env.py.)"""
import logging
import os
import random
from datetime import datetime

import numpy as np
import torch

__all__ = ["seed_all_rng", "TORCH_VERSION"]

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
