"""Optimizers and learning-rate schedules built from `cfg.SOLVER`."""
from .build import build_lr_scheduler, build_optimizer, get_default_optimizer_params, reduce_param_groups
from .lr_scheduler import LRMultiplier, WarmupCosineLR, WarmupMultiStepLR, WarmupParamScheduler

__all__ = ["build_lr_scheduler", "build_optimizer", "get_default_optimizer_params", "reduce_param_groups",
           "LRMultiplier", "WarmupParamScheduler", "WarmupMultiStepLR", "WarmupCosineLR"]
