"""Hooks: everything a training loop does besides the step itself.

Detectron2's hooks (timer, LR schedule, checkpoints, evaluation, precise BN, writers,
profilers) plus three of ours: `EMAHook` (an exponential moving average of the weights,
used for evaluation), `ValidationLoss` (the training losses on a held-out set) and
`BestCheckpointer` keeping `last_checkpoint` on the latest periodic checkpoint.
"""
import contextlib
import datetime
import logging
import math
import operator
import os
import random
import tempfile
import time
from collections import Counter, defaultdict
from typing import Callable, Dict, Iterable, List, Mapping, Optional

import numpy as np
import torch
from fvcore.common.checkpoint import Checkpointer
from fvcore.common.checkpoint import PeriodicCheckpointer as _PeriodicCheckpointer
from fvcore.common.param_scheduler import ParamScheduler
from fvcore.common.timer import Timer
from fvcore.nn.precise_bn import get_bn_modules, update_bn_stats
from torch.nn.parallel import DataParallel, DistributedDataParallel

from detzoo.solver import LRMultiplier
from detzoo.utils import comm
from detzoo.utils.events import EventStorage, EventWriter
from detzoo.utils.file_io import PathManager

from .train_loop import HookBase

__all__ = [
    "CallbackHook", "IterationTimer", "PeriodicWriter", "PeriodicCheckpointer", "BestCheckpointer",
    "LRScheduler", "AutogradProfiler", "TorchProfiler", "EvalHook", "PreciseBN", "TorchMemoryStats",
    "ModelEMA", "EMAHook", "ValidationLoss",
]

logger = logging.getLogger(__name__)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, (DistributedDataParallel, DataParallel)) else model


def _is_period_end(trainer, period: int) -> bool:
    """Whether the iteration that just finished closes a period (but is not the last one)."""
    next_iter = trainer.iter + 1
    return period > 0 and next_iter % period == 0 and next_iter != trainer.max_iter


def _finished(trainer) -> bool:
    """In after_train: whether training ran to max_iter. (TrainerBase.train leaves iter at
    max_iter after the last step, and at the failing iteration when a step raised, which
    may be max_iter - 1: Detectron2's `iter + 1 >= max_iter` test would then evaluate a
    failed run.)"""
    return trainer.iter >= trainer.max_iter


class CallbackHook(HookBase):
    """A hook made of functions, each taking the trainer as its only argument."""

    def __init__(self, *, before_train=None, after_train=None, before_step=None, after_step=None):
        self._before_train = before_train
        self._after_train = after_train
        self._before_step = before_step
        self._after_step = after_step

    def before_train(self):
        if self._before_train:
            self._before_train(self.trainer)

    def after_train(self):
        if self._after_train:
            self._after_train(self.trainer)
        # The callbacks are often closures over the trainer: drop them to break the cycle.
        self._before_train = self._after_train = self._before_step = self._after_step = None

    def before_step(self):
        if self._before_step:
            self._before_step(self.trainer)

    def after_step(self):
        if self._after_step:
            self._after_step(self.trainer)


class IterationTimer(HookBase):
    """Records the time of each step as "time" and logs the training speed at the end.

    A step is timed from this hook's `before_step` to its `after_step`; registered first,
    it measures the step plus the (by convention negligible) `before_step` of other hooks.
    """

    def __init__(self, warmup_iter=3):
        """
        Args:
            warmup_iter (int): the first iterations, left out of the timing (slow start-up).
        """
        self._warmup_iter = warmup_iter
        self._step_timer = Timer()
        self._start_time = time.perf_counter()
        self._total_timer = Timer()

    def before_train(self):
        self._start_time = time.perf_counter()
        self._total_timer.reset()
        self._total_timer.pause()

    def after_train(self):
        total_time = time.perf_counter() - self._start_time
        step_time = self._total_timer.seconds()
        num_iter = self.trainer.iter + 1 - self.trainer.start_iter - self._warmup_iter
        if num_iter > 0 and step_time > 0:
            # Scripts grep this line: keep its format.
            logger.info(f"Overall training speed: {num_iter} iterations in "
                        f"{datetime.timedelta(seconds=int(step_time))} ({step_time / num_iter:.4f} s / it)")
        logger.info(f"Total training time: {datetime.timedelta(seconds=int(total_time))} "
                    f"({datetime.timedelta(seconds=int(total_time - step_time))} on hooks)")

    def before_step(self):
        self._step_timer.reset()
        self._total_timer.resume()

    def after_step(self):
        iter_done = self.trainer.iter - self.trainer.start_iter + 1
        if iter_done >= self._warmup_iter:
            self.trainer.storage.put_scalars(time=self._step_timer.seconds())
        else:
            self._start_time = time.perf_counter()
            self._total_timer.reset()
        self._total_timer.pause()


class PeriodicWriter(HookBase):
    """Calls `write()` of each writer every `period` iterations and after the last one.
    (`period` does not change how the writers smooth values.)"""

    def __init__(self, writers: List[EventWriter], period: int = 20):
        for writer in writers:
            if not isinstance(writer, EventWriter):
                raise TypeError(f"PeriodicWriter takes EventWriter instances, got {type(writer).__name__}")
        self._writers = writers
        self._period = period

    def after_step(self):
        if (self.trainer.iter + 1) % self._period == 0 or self.trainer.iter == self.trainer.max_iter - 1:
            for writer in self._writers:
                writer.write()

    def after_train(self):
        for writer in self._writers:
            # Flush what came after the last periodic write (e.g. final evaluation results).
            writer.write()
            writer.close()


class PeriodicCheckpointer(_PeriodicCheckpointer, HookBase):
    """fvcore's PeriodicCheckpointer as a hook: saves `model_{iter:07d}.pth` every `period`
    iterations and `model_final.pth` after the last, with {"iteration": iter}."""

    def before_train(self):
        self.max_iter = self.trainer.max_iter

    def after_step(self):
        self.step(self.trainer.iter)


class BestCheckpointer(HookBase):
    """Saves `{file_prefix}.pth` whenever the evaluation metric `val_metric` improves.

    Unlike Detectron2's, it leaves `last_checkpoint` pointing at the latest periodic
    checkpoint, so `--resume` continues from where training was, not from the best model.
    """

    def __init__(self, eval_period: int, checkpointer: Checkpointer, val_metric: str, mode: str = "max",
                 file_prefix: str = "model_best"):
        """
        Args:
            eval_period (int): the period of the evaluation that records `val_metric`.
            checkpointer: the checkpointer used to save.
            val_metric (str): the scalar to watch in the EventStorage, e.g. "bbox/AP50".
            mode (str): "max" if higher is better, "min" if lower is.
            file_prefix (str): the checkpoint's name.
        """
        if mode not in ("max", "min"):
            raise ValueError(f"BestCheckpointer mode must be 'max' or 'min', got {mode!r}")
        self._period = eval_period
        self._val_metric = val_metric
        self._compare = operator.gt if mode == "max" else operator.lt
        self._checkpointer = checkpointer
        self._file_prefix = file_prefix
        self.best_metric: Optional[float] = None
        self.best_iter: Optional[int] = None

    def _best_checking(self):
        latest = self.trainer.storage.latest().get(self._val_metric)
        if latest is None:
            logger.warning(f"metric {self._val_metric!r} was not recorded; BestCheckpointer saves nothing. "
                           f"Recorded: {sorted(self.trainer.storage.latest())}")
            return
        value, metric_iter = latest
        if not math.isfinite(value):
            logger.warning(f"{self._val_metric} = {value} at iteration {metric_iter}: not a candidate for the "
                           "best model")
            return
        if self.best_metric is not None and not self._compare(value, self.best_metric):
            logger.info(f"Not saving: {self._val_metric} = {value:.5f} at iteration {metric_iter} is not better than "
                        f"{self.best_metric:.5f} at iteration {self.best_iter}")
            return
        self._save_keeping_last_checkpoint(metric_iter)
        logger.info(f"Saved best model: {self._val_metric} = {value:.5f} at iteration {metric_iter} "
                    f"(previous best: {self.best_metric})")
        self.best_metric, self.best_iter = value, metric_iter

    def _save_keeping_last_checkpoint(self, iteration):
        previous = self._checkpointer.get_checkpoint_file() if self._checkpointer.has_checkpoint() else None
        self._checkpointer.save(self._file_prefix, iteration=iteration)
        if previous:
            self._checkpointer.tag_last_checkpoint(os.path.basename(previous))

    def after_step(self):
        if _is_period_end(self.trainer, self._period):
            self._best_checking()

    def after_train(self):
        if _finished(self.trainer):
            self._best_checking()

    def state_dict(self):
        return {"best_metric": self.best_metric, "best_iter": self.best_iter}

    def load_state_dict(self, state_dict):
        self.best_metric = state_dict["best_metric"]
        self.best_iter = state_dict["best_iter"]


class LRScheduler(HookBase):
    """Steps an LR scheduler after every iteration and records the LR as "lr".

    The recorded LR is that of the param group with the most parameters (or, when every
    group holds one parameter, the most common LR).
    """

    def __init__(self, optimizer=None, scheduler=None):
        """
        Args:
            optimizer (torch.optim.Optimizer): None uses `trainer.optimizer`.
            scheduler (torch.optim.lr_scheduler.LRScheduler or fvcore ParamScheduler): None uses
                `trainer.scheduler`; a ParamScheduler is wrapped in an `LRMultiplier`.
        """
        self._optimizer = optimizer
        self._scheduler = scheduler

    def before_train(self):
        self._optimizer = self._optimizer or self.trainer.optimizer
        if isinstance(self.scheduler, ParamScheduler):
            self._scheduler = LRMultiplier(self._optimizer, self.scheduler, self.trainer.max_iter,
                                           last_iter=self.trainer.iter - 1)
        self._best_param_group_id = LRScheduler.get_best_param_group_id(self._optimizer)

    @staticmethod
    def get_best_param_group_id(optimizer) -> int:
        largest_group = max(len(g["params"]) for g in optimizer.param_groups)
        if largest_group > 1:
            return next(i for i, g in enumerate(optimizer.param_groups) if len(g["params"]) == largest_group)
        most_common_lr = Counter(g["lr"] for g in optimizer.param_groups).most_common(1)[0][0]
        return next(i for i, g in enumerate(optimizer.param_groups) if g["lr"] == most_common_lr)

    def after_step(self):
        lr = self._optimizer.param_groups[self._best_param_group_id]["lr"]
        self.trainer.storage.put_scalar("lr", lr, smoothing_hint=False)
        self.scheduler.step()

    @property
    def scheduler(self):
        return self._scheduler if self._scheduler is not None else self.trainer.scheduler

    def state_dict(self):
        if isinstance(self.scheduler, torch.optim.lr_scheduler.LRScheduler):
            return self.scheduler.state_dict()
        return {}

    def load_state_dict(self, state_dict):
        if isinstance(self.scheduler, torch.optim.lr_scheduler.LRScheduler):
            logger.info("Loading the LR scheduler state from the checkpoint")
            self.scheduler.load_state_dict(state_dict)


class TorchProfiler(HookBase):
    """Runs `torch.profiler` on the iterations selected by `enable_predicate`.

    Example::

        hooks.TorchProfiler(lambda trainer: 10 < trainer.iter < 20, cfg.OUTPUT_DIR)

    profiles iterations 11-19 (the first ones are slower than the rest). Traces go to
    `output_dir/log/profiler-tensorboard-iter{N}/` for tensorboard's profiler plugin, or
    with `save_tensorboard=False` to `output_dir/profiler-trace-iter{N}.json`, which
    chrome://tracing and Perfetto open.
    """

    def __init__(self, enable_predicate: Callable, output_dir: str, *, activities: Optional[Iterable] = None,
                 save_tensorboard: bool = True):
        """
        Args:
            enable_predicate (callable[trainer -> bool]): called every step; profile the step if True.
            output_dir (str): where the traces go.
            activities (iterable): `torch.profiler.ProfilerActivity` values; None profiles CPU
                and, when available, CUDA.
            save_tensorboard (bool): write tensorboard traces instead of a chrome trace file.
        """
        self._enable_predicate = enable_predicate
        self._activities = activities
        self._output_dir = output_dir
        self._save_tensorboard = save_tensorboard
        self._profiler = None

    def before_step(self):
        if not self._enable_predicate(self.trainer):
            self._profiler = None
            return
        on_trace_ready = None
        if self._save_tensorboard:
            trace_dir = os.path.join(self._output_dir, "log", f"profiler-tensorboard-iter{self.trainer.iter}")
            on_trace_ready = torch.profiler.tensorboard_trace_handler(trace_dir, f"worker{comm.get_rank()}")
        self._profiler = torch.profiler.profile(activities=self._activities, on_trace_ready=on_trace_ready,
                                                record_shapes=True, profile_memory=True, with_stack=True,
                                                with_flops=True)
        self._profiler.__enter__()

    def after_step(self):
        if self._profiler is None:
            return
        self._profiler.__exit__(None, None, None)
        if not self._save_tensorboard:
            self._export_chrome_trace()

    def _export_chrome_trace(self):
        PathManager.mkdirs(self._output_dir)
        out_file = os.path.join(self._output_dir, f"profiler-trace-iter{self.trainer.iter}.json")
        if "://" not in out_file:
            self._profiler.export_chrome_trace(out_file)
            return
        # Remote storage: export locally, then copy through the PathManager.
        with tempfile.TemporaryDirectory(prefix="detzoo_profiler") as tmp_dir:
            tmp_file = os.path.join(tmp_dir, "trace.json")
            self._profiler.export_chrome_trace(tmp_file)
            with open(tmp_file) as src, PathManager.open(out_file, "w") as dst:
                dst.write(src.read())


class AutogradProfiler(TorchProfiler):
    """Like `TorchProfiler` with `torch.autograd.profiler.profile`; writes a chrome trace
    `output_dir/profiler-trace-iter{N}.json` per profiled iteration.

    Note: with NCCL on old GPUs this profiler may deadlock (it allocates memory on every
    visible device, interleaved with NCCL calls).
    """

    def __init__(self, enable_predicate: Callable, output_dir: str, *, use_cuda: bool = True):
        super().__init__(enable_predicate, output_dir, save_tensorboard=False)
        self._use_cuda = use_cuda

    def before_step(self):
        if not self._enable_predicate(self.trainer):
            self._profiler = None
            return
        device = "cuda" if self._use_cuda and torch.cuda.is_available() else None
        self._profiler = torch.autograd.profiler.profile(use_device=device)
        self._profiler.__enter__()


class EvalHook(HookBase):
    """Runs an evaluation function every `eval_period` iterations and after the last one,
    and records its (nested dict of float) results as scalars, e.g. "bbox/AP".

    The hook must run on all processes or none (evaluation is collective); to evaluate on
    some only, give the others `eval_function=lambda: None`.
    """

    def __init__(self, eval_period: int, eval_function: Callable[[], Optional[Mapping]],
                 eval_after_train: bool = True):
        """
        Args:
            eval_period (int): evaluate every this many iterations; 0 only at the end.
            eval_function (callable): no arguments; returns a nested dict of floats (or None).
            eval_after_train (bool): also evaluate after the last iteration.
        """
        self._period = eval_period
        self._func = eval_function
        self._eval_after_train = eval_after_train

    def _do_eval(self):
        results = self._func()
        if results:
            if not isinstance(results, Mapping):
                raise TypeError(f"the evaluation function must return a dict, got {type(results).__name__}: "
                                f"{results!r}")
            flattened = _flatten_results_dict(results)
            for name, value in flattened.items():
                try:
                    flattened[name] = float(value)
                except (TypeError, ValueError) as e:
                    raise ValueError(f"the evaluation function must return a nested dict of floats; "
                                     f"got {name}: {value!r}") from e
            self.trainer.storage.put_scalars(**flattened, smoothing_hint=False)
        # Processes finish evaluating at different times; start the next step together.
        comm.synchronize()

    def after_step(self):
        if _is_period_end(self.trainer, self._period):
            self._do_eval()

    def after_train(self):
        if self._eval_after_train and _finished(self.trainer):
            self._do_eval()
        # The function is usually a closure over the trainer: drop it to break the cycle.
        del self._func


def _flatten_results_dict(results: Mapping, prefix: str = "") -> Dict[str, object]:
    """{"bbox": {"AP": 1.0}} -> {"bbox/AP": 1.0}."""
    flat = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten_results_dict(value, prefix=name + "/"))
        else:
            flat[name] = value
    return flat


class PreciseBN(HookBase):
    """Replaces the running statistics of the BatchNorm layers in training mode by their
    true average over `num_iter` batches ("precise BN"), every `period` iterations and after
    the last one. Does nothing for models without such layers (e.g. with FrozenBN)."""

    def __init__(self, period: int, model: torch.nn.Module, data_loader: Iterable, num_iter: int):
        """
        Args:
            period (int): run every this many iterations; 0 only at the end.
            model (nn.Module): its BN layers in training mode are updated.
            data_loader (iterable): batches for `model(batch)`; a separate loader from the
                training one, so as not to disturb its order.
            num_iter (int): batches averaged.
        """
        self._disabled = len(get_bn_modules(model)) == 0
        if self._disabled:
            logger.info("PreciseBN is disabled: the model has no BatchNorm layer in training mode")
            return
        self._model = model
        self._data_loader = data_loader
        self._num_iter = num_iter
        self._period = period
        self._data_iter = None

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if next_iter == self.trainer.max_iter or (self._period > 0 and next_iter % self._period == 0):
            self.update_stats()

    def update_stats(self):
        """Recompute the statistics now (may also be called by hand)."""
        if self._disabled:
            return
        if self._data_iter is None:
            self._data_iter = iter(self._data_loader)

        def batches():
            # Continue the same iterator across calls, logging progress now and then.
            for count in range(1, self._num_iter + 1):
                if count % 100 == 0:
                    logger.info(f"Running precise-BN ... {count}/{self._num_iter} iterations")
                yield next(self._data_iter)

        # The model's own scalars (e.g. RPN statistics) go to a scratch storage.
        with EventStorage():
            logger.info(f"Running precise-BN for {self._num_iter} iterations (the statistics differ between "
                        "runs: they depend on the batches drawn)")
            update_bn_stats(self._model, batches(), self._num_iter)


class TorchMemoryStats(HookBase):
    """Logs CUDA memory statistics every `period` iterations, `max_runs` times."""

    def __init__(self, period: int = 20, max_runs: int = 10):
        self._period = period
        self._max_runs = max_runs
        self._runs = 0

    def after_step(self):
        if self._runs > self._max_runs or not torch.cuda.is_available():
            return
        if (self.trainer.iter + 1) % self._period != 0 and self.trainer.iter != self.trainer.max_iter - 1:
            return
        mib = 1024.0 * 1024.0
        logger.info(f"iter: {self.trainer.iter}  max_reserved_mem: {torch.cuda.max_memory_reserved() / mib:.0f}MB  "
                    f"reserved_mem: {torch.cuda.memory_reserved() / mib:.0f}MB  "
                    f"max_allocated_mem: {torch.cuda.max_memory_allocated() / mib:.0f}MB  "
                    f"allocated_mem: {torch.cuda.memory_allocated() / mib:.0f}MB")
        self._runs += 1
        if self._runs == self._max_runs:
            logger.info("\n" + torch.cuda.memory_summary())
        torch.cuda.reset_peak_memory_stats()


# ------------------------------------------------------------------------------- model EMA
class ModelEMA:
    """An exponential moving average of a model's state dict (parameters and buffers):
    `ema = decay * ema + (1 - decay) * current` for floating-point entries, a plain copy
    for the others (e.g. BatchNorm's `num_batches_tracked`).

    It is checkpointed as a flat state dict (`state_dict()` / `load_state_dict()`), and
    `apply_to(model)` swaps the averaged weights in for evaluation.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999, device: str = ""):
        """
        Args:
            model (nn.Module): the model to average (unwrapped from DDP if needed).
            decay (float): in [0, 1); the weight of the past.
            device (str): where the average lives; "" keeps each tensor on the model's device.
        """
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"MODEL_EMA.DECAY must be in [0, 1), got {decay}")
        self.decay = decay
        self.device = device or None
        self.state: Dict[str, torch.Tensor] = {}
        self.loaded_from_checkpoint = False
        self.reset(model)

    @torch.no_grad()
    def reset(self, model: torch.nn.Module) -> None:
        """Restart the average from the model's current weights."""
        self.state = {name: value.detach().clone().to(self.device or value.device)
                      for name, value in _unwrap(model).state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for name, value in _unwrap(model).state_dict().items():
            average = self.state[name]
            value = value.detach().to(average.device)
            if average.is_floating_point():
                average.lerp_(value.to(average.dtype), 1.0 - self.decay)
            else:
                average.copy_(value)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Overwrite the model's weights by the average."""
        model_state = _unwrap(model).state_dict()
        for name, average in self.state.items():
            model_state[name].copy_(average)

    @contextlib.contextmanager
    def apply_to(self, model: torch.nn.Module):
        """Run the enclosed code with the averaged weights in `model`, restored afterwards."""
        model_state = _unwrap(model).state_dict()
        backup = {name: value.detach().clone() for name, value in model_state.items()}
        self.copy_to(model)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in backup.items():
                    model_state[name].copy_(value)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.state

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        missing = sorted(set(self.state) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(self.state))
        if missing or unexpected:
            raise KeyError(f"EMA state does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        with torch.no_grad():
            for name, value in state_dict.items():
                self.state[name].copy_(value)
        self.loaded_from_checkpoint = True


class EMAHook(HookBase):
    """Updates a `ModelEMA` after every optimizer step.

    At the start of training the average restarts from the model's weights (which may have
    been loaded from MODEL.WEIGHTS after the EMA was built), unless it was restored from a
    checkpoint.
    """

    def __init__(self, model: torch.nn.Module, model_ema: ModelEMA):
        self._model = model
        self._model_ema = model_ema

    def before_train(self):
        if not self._model_ema.loaded_from_checkpoint:
            self._model_ema.reset(self._model)

    def after_step(self):
        self._model_ema.update(self._model)


# -------------------------------------------------------------------------- validation loss
class ValidationLoss(HookBase):
    """Computes the training losses on a held-out set every `period` iterations and after
    the last one, recorded as "val_total_loss" and "val_<loss name>".

    The model runs in training mode (it needs the annotations to compute losses) without
    gradients, and the random number generators are restored afterwards, so computing the
    validation loss does not change the training run.
    """

    def __init__(self, period: int, model: torch.nn.Module, data_loader: Iterable,
                 num_batches: Optional[int] = None):
        """
        Args:
            period (int): run every this many iterations (> 0).
            model (nn.Module): the trained model (DDP-wrapped or not).
            data_loader (iterable): batches with annotations, e.g. `build_detection_test_loader`
                with `DatasetMapper(cfg, is_train=True)`; each process should see its shard.
            num_batches (int): batches per evaluation per process; None takes the whole loader.
        """
        if period <= 0:
            raise ValueError(f"ValidationLoss period must be positive, got {period}")
        self._period = period
        self._model = model
        self._data_loader = data_loader
        self._num_batches = num_batches

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if next_iter % self._period == 0 or next_iter == self.trainer.max_iter:
            losses = self.compute()
            self.trainer.storage.put_scalars(smoothing_hint=False, **losses)

    def compute(self) -> Dict[str, float]:
        """{"val_total_loss": ..., "val_<name>": ...} averaged over batches and processes."""
        model = _unwrap(self._model)
        sums, count = self._sum_losses(model)
        gathered = comm.all_gather((sums, count))
        total_count = sum(c for _, c in gathered)
        if total_count == 0:
            logger.warning("the validation loader gave no batch; no validation loss recorded")
            return {}
        names = sorted({name for s, _ in gathered for name in s})
        losses = {f"val_{name}": sum(s.get(name, 0.0) for s, _ in gathered) / total_count for name in names}
        losses["val_total_loss"] = sum(losses.values())
        return losses

    def _sum_losses(self, model):
        sums: Dict[str, float] = defaultdict(float)
        count = 0
        was_training = model.training
        model.train()
        try:
            with torch.no_grad(), _preserved_rng_state(), EventStorage(self.trainer.iter):
                for batch in self._data_loader:
                    if self._num_batches is not None and count >= self._num_batches:
                        break
                    loss_dict = model(batch)
                    if isinstance(loss_dict, torch.Tensor):
                        loss_dict = {"total_loss": loss_dict}
                    for name, value in loss_dict.items():
                        sums[name] += float(value)
                    count += 1
        finally:
            model.train(was_training)
        return dict(sums), count


@contextlib.contextmanager
def _preserved_rng_state():
    """Restore Python's, numpy's and torch's (CPU and current CUDA device) RNG states on exit."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
