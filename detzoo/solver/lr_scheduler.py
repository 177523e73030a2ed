"""Learning-rate schedules for iteration-based training.

The schedule is an fvcore `ParamScheduler`: a pure function from training progress
`where` in [0, 1] to a multiplier. `LRMultiplier` turns it into a torch LR scheduler that
sets every param group's lr to its initial lr times that multiplier, so groups with
different base LRs (e.g. `BIAS_LR_FACTOR`) keep their ratios. `WarmupParamScheduler`
prepends a warmup phase to any such schedule.

PyTorch's scheduler API counts "epochs"; here `last_epoch` means the number of optimizer
steps (iterations) taken.
"""
import logging
import math
from bisect import bisect_right
from typing import List

import torch
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    LinearParamScheduler,
    ParamScheduler,
)
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["WarmupParamScheduler", "LRMultiplier", "WarmupMultiStepLR", "WarmupCosineLR"]

logger = logging.getLogger(__name__)

_WARMUP_METHODS = ("linear", "constant")


class WarmupParamScheduler(CompositeParamScheduler):
    """`scheduler` preceded by a warmup over the first `warmup_length` of training.

    The warmup starts at `warmup_factor * scheduler(0)` and either stays there ("constant")
    or rises linearly ("linear") to the value the main schedule has where warmup ends
    (`scheduler(warmup_length)`, or `scheduler(0)` with `rescale_interval`).
    """

    def __init__(self, scheduler: ParamScheduler, warmup_factor: float, warmup_length: float,
                 warmup_method: str = "linear", rescale_interval: bool = False):
        """
        Args:
            scheduler: the main schedule.
            warmup_factor: the first value, relative to `scheduler(0)` (e.g. 0.001).
            warmup_length: fraction of training spent warming up, in [0, 1].
            warmup_method: "linear" or "constant".
            rescale_interval: stretch `scheduler` over the remaining `1 - warmup_length`
                of training instead of starting it at `warmup_length`.
        """
        if not 0.0 <= warmup_length <= 1.0:
            raise ValueError(f"warmup_length must be a fraction of training in [0, 1], got {warmup_length}")
        start_value = warmup_factor * scheduler(0.0)
        end_value = scheduler(0.0) if rescale_interval else scheduler(warmup_length)
        if warmup_method == "linear":
            warmup = LinearParamScheduler(start_value, end_value)
        elif warmup_method == "constant":
            warmup = ConstantParamScheduler(start_value)
        else:
            raise ValueError(f"unknown warmup method {warmup_method!r}; expected one of {_WARMUP_METHODS}")
        super().__init__(
            [warmup, scheduler],
            interval_scaling=["rescaled", "rescaled" if rescale_interval else "fixed"],
            lengths=[warmup_length, 1.0 - warmup_length],
        )


class LRMultiplier(LRScheduler):
    """Sets each param group's lr to `initial_lr * multiplier(iteration / max_iter)`.

    Example::

        sched = WarmupParamScheduler(
            MultiStepParamScheduler([1, 0.1, 0.01], milestones=[60000, 80000], num_updates=90000),
            warmup_factor=0.001, warmup_length=1000 / 90000)
        lr_scheduler = LRMultiplier(optimizer, sched, max_iter=90000)

    One multiplier serves all groups, which covers schedules where the groups' LRs keep
    fixed ratios; it keeps the state to checkpoint down to two numbers.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, multiplier: ParamScheduler, max_iter: int,
                 last_iter: int = -1):
        """
        Args:
            optimizer: the optimizer whose param groups are scheduled.
            multiplier: an fvcore ParamScheduler giving the factor at each point of training.
            max_iter: the number of iterations of the whole training.
            last_iter: the last finished iteration (torch's `last_epoch`); -1 starts fresh.
        """
        if not isinstance(multiplier, ParamScheduler):
            raise TypeError(f"LRMultiplier(multiplier=...) must be an fvcore ParamScheduler, "
                            f"got {type(multiplier).__name__}")
        if max_iter <= 0:
            raise ValueError(f"max_iter must be positive, got {max_iter}")
        self._multiplier = multiplier
        self._max_iter = max_iter
        super().__init__(optimizer, last_epoch=last_iter)

    def state_dict(self):
        # The fvcore schedule is stateless (and may hold lambdas): only the torch part is saved.
        return {"base_lrs": self.base_lrs, "last_epoch": self.last_epoch}

    def get_lr(self) -> List[float]:
        # Past the last iteration (the scheduler is stepped once more after it) the last
        # iteration's value holds: some fvcore schedules are undefined at where = 1.
        iteration = min(self.last_epoch, self._max_iter - 1)
        factor = self._multiplier(iteration / self._max_iter)
        return [base_lr * factor for base_lr in self.base_lrs]


def _get_warmup_factor_at_iter(method: str, iter: int, warmup_iters: int, warmup_factor: float) -> float:
    """Multiplier of the base LR at iteration `iter` of a warmup lasting `warmup_iters`
    ("Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", Goyal et al.)."""
    if iter >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    if method == "linear":
        progress = iter / warmup_iters
        return warmup_factor + (1.0 - warmup_factor) * progress
    raise ValueError(f"unknown warmup method {method!r}; expected one of {_WARMUP_METHODS}")


class WarmupMultiStepLR(LRScheduler):
    """Step decay by `gamma` at each milestone, after a warmup (a torch scheduler computed
    in closed form). Kept for code written against Detectron2's older API; configs build an
    `LRMultiplier` instead (see `build_lr_scheduler`)."""

    def __init__(self, optimizer: torch.optim.Optimizer, milestones: List[int], gamma: float = 0.1,
                 warmup_factor: float = 0.001, warmup_iters: int = 1000, warmup_method: str = "linear",
                 last_epoch: int = -1):
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {list(milestones)}")
        self.milestones = list(milestones)
        self.gamma = gamma
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        warmup = _get_warmup_factor_at_iter(self.warmup_method, self.last_epoch, self.warmup_iters,
                                            self.warmup_factor)
        decay = self.gamma ** bisect_right(self.milestones, self.last_epoch)
        return [base_lr * warmup * decay for base_lr in self.base_lrs]

    def _compute_values(self) -> List[float]:
        return self.get_lr()


class WarmupCosineLR(LRScheduler):
    """Half-cosine decay from the base LR to 0 over `max_iters`, multiplied by a warmup
    factor at the start. Kept for code written against Detectron2's older API."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_iters: int, warmup_factor: float = 0.001,
                 warmup_iters: int = 1000, warmup_method: str = "linear", last_epoch: int = -1):
        self.max_iters = max_iters
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        warmup = _get_warmup_factor_at_iter(self.warmup_method, self.last_epoch, self.warmup_iters,
                                            self.warmup_factor)
        cosine = 0.5 * (1.0 + math.cos(math.pi * self.last_epoch / self.max_iters))
        return [base_lr * warmup * cosine for base_lr in self.base_lrs]

    def _compute_values(self) -> List[float]:
        return self.get_lr()
