"""The training loop: a trainer runs `run_step()` from `start_iter` to `max_iter`, and hooks
do everything else (LR schedule, checkpoints, evaluation, logging) around each step.

    hook.before_train()
    for iter in range(start_iter, max_iter):
        hook.before_step()
        trainer.run_step()        # calls hook.after_backward() between backward and step
        hook.after_step()
    iter += 1
    hook.after_train()

One "iteration" is one optimizer step. With gradient accumulation (`grad_accum_steps=k`)
a step consumes k batches, so LR schedules, checkpoint periods and `max_iter` keep
counting optimizer steps.
"""
import concurrent.futures
import contextlib
import logging
import math
import time
import weakref
from typing import Dict, List, Mapping, Optional

import numpy as np
import torch
from torch.nn.parallel import DataParallel, DistributedDataParallel

from detzoo.utils import comm
from detzoo.utils.events import EventStorage, get_event_storage

__all__ = ["HookBase", "TrainerBase", "SimpleTrainer", "AMPTrainer"]

logger = logging.getLogger(__name__)


class HookBase:
    """Base class of the hooks a `TrainerBase` calls around training and each step.

    `self.trainer` is a weak reference to the trainer, set by `register_hooks`. Work that
    takes time belongs in `after_step`, not `before_step`, so that timing hooks
    (`IterationTimer`) measure the step itself.

    A hook with state to checkpoint (e.g. the LR scheduler's position) implements
    `state_dict` / `load_state_dict`; the trainer saves it under the hook's class name.
    """

    trainer: "TrainerBase" = None

    def before_train(self):
        """Called once, before the first iteration."""

    def after_train(self):
        """Called once, after the last iteration (also when training raised)."""

    def before_step(self):
        """Called before each iteration."""

    def after_backward(self):
        """Called after the backward pass of each iteration, before the optimizer step."""

    def after_step(self):
        """Called after each iteration."""

    def state_dict(self):
        return {}


class TrainerBase:
    """A loop over iterations with hooks; it assumes nothing about models, data or optimizers.

    Attributes:
        iter (int): the current iteration.
        start_iter (int): the iteration training starts from (0 unless resumed).
        max_iter (int): training stops before this iteration.
        storage (EventStorage): the metrics storage, open during `train()`.
    """

    def __init__(self) -> None:
        self._hooks: List[HookBase] = []
        self.iter: int = 0
        self.start_iter: int = 0
        self.max_iter: int = 0
        self.storage: Optional[EventStorage] = None

    def register_hooks(self, hooks: List[Optional[HookBase]]) -> None:
        """Append `hooks` (None entries are skipped); they run in registration order."""
        hooks = [h for h in hooks if h is not None]
        for h in hooks:
            if not isinstance(h, HookBase):
                raise TypeError(f"hooks must be HookBase instances, got {type(h).__name__}")
            # A weak reference: a hook owning the trainer (and vice versa) would form a cycle
            # that keeps both, and everything they hold, alive.
            h.trainer = weakref.proxy(self)
        self._hooks.extend(hooks)

    def train(self, start_iter: int, max_iter: int):
        """Run iterations `start_iter, ..., max_iter - 1`."""
        logger.info(f"Starting training from iteration {start_iter}")
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        with EventStorage(start_iter) as self.storage:
            try:
                self.before_train()
                for self.iter in range(start_iter, max_iter):
                    self.before_step()
                    self.run_step()
                    self.after_step()
                # After a complete run iter == max_iter; after_train hooks use this to tell
                # a finished training from one that raised.
                self.iter += 1
            except Exception:
                logger.exception("Exception during training:")
                raise
            finally:
                self.after_train()

    def before_train(self):
        for h in self._hooks:
            h.before_train()

    def after_train(self):
        self.storage.iter = self.iter
        for h in self._hooks:
            h.after_train()

    def before_step(self):
        # Everything recorded during the step is attributed to this iteration.
        self.storage.iter = self.iter
        for h in self._hooks:
            h.before_step()

    def after_backward(self):
        for h in self._hooks:
            h.after_backward()

    def after_step(self):
        for h in self._hooks:
            h.after_step()

    def run_step(self):
        raise NotImplementedError

    def state_dict(self):
        state = {"iteration": self.iter}
        hooks_state = {}
        for h in self._hooks:
            hook_state = h.state_dict()
            if not hook_state:
                continue
            name = type(h).__qualname__
            if name in hooks_state:
                logger.warning(f"several {name} hooks have state; only the first one's is checkpointed")
                continue
            hooks_state[name] = hook_state
        if hooks_state:
            state["hooks"] = hooks_state
        return state

    def load_state_dict(self, state_dict):
        self.iter = state_dict["iteration"]
        for name, hook_state in state_dict.get("hooks", {}).items():
            hook = next((h for h in self._hooks if type(h).__qualname__ == name), None)
            if hook is None:
                logger.warning(f"the checkpoint has state for a hook {name!r} that is not registered; ignored")
                continue
            hook.load_state_dict(hook_state)


class SimpleTrainer(TrainerBase):
    """Single-loss, single-optimizer training, optionally data-parallel. Each step:

    1. draws a batch from `data_loader` and computes the loss dict `model(batch)`;
    2. back-propagates the sum of the losses;
    3. steps the optimizer.

    With `grad_accum_steps=k`, steps 1-2 run on k consecutive batches with each loss divided
    by k, so for losses that are means over the batch the gradient equals that of one
    batch k times larger (models with BatchNorm in training mode excepted: its statistics
    stay per batch). In DDP the gradients are synchronized once, on the last batch.
    """

    def __init__(self, model, data_loader, optimizer, gather_metric_period=1, zero_grad_before_forward=False,
                 async_write_metrics=False, *, grad_accum_steps=1):
        """
        Args:
            model (nn.Module): takes a batch from `data_loader`, returns a dict of scalar
                losses (or one scalar loss tensor).
            data_loader (iterable): yields batches; iterated lazily, without end.
            optimizer (torch.optim.Optimizer):
            gather_metric_period (int): gather and record the losses every this many steps.
            zero_grad_before_forward (bool): zero the gradients before the forward pass
                (default: after it, before backward), e.g. for models that read `.grad`.
            async_write_metrics (bool): gather and record metrics in a background thread.
            grad_accum_steps (int): batches whose gradients are accumulated per step.
        """
        super().__init__()
        if int(grad_accum_steps) < 1:
            raise ValueError(f"grad_accum_steps must be a positive integer, got {grad_accum_steps}")
        # Training mode is set here; a model that wants some submodule in eval mode during
        # training can override its train().
        model.train()
        self.model = model
        self.data_loader = data_loader
        self._data_loader_iter_obj = None
        self.optimizer = optimizer
        self.gather_metric_period = gather_metric_period
        self.zero_grad_before_forward = zero_grad_before_forward
        self.async_write_metrics = async_write_metrics
        self.grad_accum_steps = int(grad_accum_steps)
        self._metrics_executor = None
        self._pending_metrics_write = None

    # ------------------------------------------------------------------ the step
    def run_step(self):
        if not self.model.training:
            raise RuntimeError(f"{type(self).__name__}: the model was switched to eval mode during training; "
                               "call model.train() after evaluating")
        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        loss_dict, data_time = self._forward_backward()
        self.after_backward()
        if self.async_write_metrics:
            self._write_metrics_in_background(loss_dict, data_time)
        else:
            self._write_metrics(loss_dict, data_time)
        self._optimizer_step()

    def _forward_backward(self):
        """Forward and backward over `grad_accum_steps` batches.

        Returns:
            (dict[str, Tensor], float): each loss averaged over the batches (detached when
            accumulating), and the total time spent waiting for data.
        """
        data_time = 0.0
        accumulated: Dict[str, torch.Tensor] = {}
        for micro_step in range(self.grad_accum_steps):
            start = time.perf_counter()
            data = next(self._data_loader_iter)
            data_time += time.perf_counter() - start
            is_last = micro_step == self.grad_accum_steps - 1
            with self._gradient_sync(enabled=is_last):
                loss_dict, losses = self._forward(data)
                if micro_step == 0 and not self.zero_grad_before_forward:
                    self.optimizer.zero_grad()
                self._backward(losses / self.grad_accum_steps if self.grad_accum_steps > 1 else losses)
            if self.grad_accum_steps == 1:
                return loss_dict, data_time
            for name, value in loss_dict.items():
                value = value.detach() / self.grad_accum_steps
                accumulated[name] = accumulated[name] + value if name in accumulated else value
        return accumulated, data_time

    def _gradient_sync(self, enabled):
        """DDP all-reduces gradients in every backward; skip it on all but the last batch."""
        if enabled or not isinstance(self.model, DistributedDataParallel):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def _forward(self, data):
        """(loss dict, total loss) of `model(data)`."""
        loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            return {"total_loss": loss_dict}, loss_dict
        if not isinstance(loss_dict, Mapping) or not loss_dict:
            raise TypeError(f"in training the model must return a non-empty dict of losses or a loss tensor, got "
                            f"{type(loss_dict).__name__}")
        return loss_dict, sum(loss_dict.values())

    def _backward(self, losses):
        losses.backward()

    def _optimizer_step(self):
        self.optimizer.step()

    # ------------------------------------------------------------------ data
    @property
    def _data_loader_iter(self):
        # Created on first use, so that building a trainer does not start loader workers.
        if self._data_loader_iter_obj is None:
            self._data_loader_iter_obj = iter(self.data_loader)
        return self._data_loader_iter_obj

    def reset_data_loader(self, data_loader_builder):
        """Replace the data loader by `data_loader_builder()` (called without arguments)."""
        del self.data_loader
        self.data_loader = data_loader_builder()
        self._data_loader_iter_obj = None

    # ------------------------------------------------------------------ metrics
    def _write_metrics(self, loss_dict: Mapping[str, torch.Tensor], data_time: float, prefix: str = "",
                       iter: Optional[int] = None) -> None:
        cur_iter = self.iter if iter is None else iter
        if (cur_iter + 1) % self.gather_metric_period == 0:
            SimpleTrainer.write_metrics(loss_dict, data_time, cur_iter, prefix)

    def _write_metrics_in_background(self, loss_dict, data_time):
        self._wait_for_metrics_write()  # also re-raises an error of the previous write
        if self._metrics_executor is None:
            self._metrics_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._pending_metrics_write = self._metrics_executor.submit(self._write_metrics, loss_dict, data_time,
                                                                    iter=self.iter)

    def _wait_for_metrics_write(self):
        pending, self._pending_metrics_write = self._pending_metrics_write, None
        if pending is not None:
            pending.result()

    @staticmethod
    def write_metrics(loss_dict: Mapping[str, torch.Tensor], data_time: float, cur_iter: int,
                      prefix: str = "") -> None:
        """Record the losses (averaged over processes) and the data time (the slowest
        process's) in the current EventStorage.

        Raises:
            FloatingPointError: when a loss is NaN or infinite, naming the loss and iteration.
        """
        metrics = {name: value.detach().cpu().item() for name, value in loss_dict.items()}
        _check_losses_are_finite(metrics, cur_iter)
        metrics["data_time"] = data_time
        # Metrics are averaged over processes: this assumes DDP-style training.
        all_metrics = comm.gather(metrics)
        if not comm.is_main_process():
            return
        storage = get_event_storage()
        # Workers wait for the slowest loader, so that one is the real data latency.
        storage.put_scalar("data_time", np.max([m.pop("data_time") for m in all_metrics]), cur_iter=cur_iter)
        metrics = {name: np.mean([m[name] for m in all_metrics]) for name in all_metrics[0]}
        storage.put_scalar(f"{prefix}total_loss", sum(metrics.values()), cur_iter=cur_iter)
        if len(metrics) > 1:
            storage.put_scalars(cur_iter=cur_iter, **metrics)

    # ------------------------------------------------------------------ state
    def state_dict(self):
        state = super().state_dict()
        state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self.optimizer.load_state_dict(state_dict["optimizer"])

    def after_train(self):
        super().after_train()
        self._finish_background_work()

    def _finish_background_work(self):
        if self._metrics_executor is not None:
            self._metrics_executor.shutdown(wait=True)
            self._metrics_executor = None
        self._wait_for_metrics_write()


def _check_losses_are_finite(metrics: Mapping[str, float], cur_iter: int) -> None:
    bad = {name: value for name, value in metrics.items() if not math.isfinite(value)}
    if not bad:
        return
    where = f" on rank {comm.get_rank()}" if comm.get_world_size() > 1 else ""
    names = ", ".join(f"{name}={value}" for name, value in bad.items())
    raise FloatingPointError(f"Loss became infinite or NaN at iteration={cur_iter}{where}: {names}\n"
                             f"loss_dict = {dict(metrics)}")


def _device_type_of(model) -> str:
    param = next(model.parameters(), None)
    return "cpu" if param is None else param.device.type


class AMPTrainer(SimpleTrainer):
    """`SimpleTrainer` with automatic mixed precision: the forward pass runs under
    `torch.autocast` in `precision` (float16 or bfloat16), on CUDA or on CPU.

    float16 needs loss scaling against underflowing gradients (a `GradScaler`); bfloat16
    has float32's range, so its default scaler is disabled (a no-op).
    """

    def __init__(self, model, data_loader, optimizer, gather_metric_period=1, zero_grad_before_forward=False,
                 grad_scaler=None, precision: torch.dtype = torch.float16, log_grad_scaler: bool = False,
                 async_write_metrics=False, *, grad_accum_steps=1):
        """
        Args:
            model, data_loader, optimizer, gather_metric_period, zero_grad_before_forward,
                async_write_metrics, grad_accum_steps: as in `SimpleTrainer`.
            grad_scaler (torch.amp.GradScaler): None makes one for the model's device,
                enabled for float16 only.
            precision (torch.dtype): torch.float16 or torch.bfloat16.
            log_grad_scaler (bool): record the loss scale in the storage each step.
        """
        unsupported = "AMPTrainer does not support single-process multi-device training (DataParallel)"
        if isinstance(model, DistributedDataParallel) and model.device_ids and len(model.device_ids) > 1:
            raise ValueError(unsupported)
        if isinstance(model, DataParallel):
            raise ValueError(unsupported)
        if precision not in (torch.float16, torch.bfloat16):
            raise ValueError(f"AMPTrainer precision must be torch.float16 or torch.bfloat16, got {precision}")
        super().__init__(model, data_loader, optimizer, gather_metric_period, zero_grad_before_forward,
                         async_write_metrics, grad_accum_steps=grad_accum_steps)
        self.device_type = _device_type_of(model)
        if grad_scaler is None:
            grad_scaler = torch.amp.GradScaler(self.device_type, enabled=precision == torch.float16)
        self.grad_scaler = grad_scaler
        self.precision = precision
        self.log_grad_scaler = log_grad_scaler

    def _forward(self, data):
        with torch.autocast(device_type=self.device_type, dtype=self.precision):
            return super()._forward(data)

    def _backward(self, losses):
        self.grad_scaler.scale(losses).backward()

    def _optimizer_step(self):
        if self.log_grad_scaler:
            get_event_storage().put_scalar("[metric]grad_scaler", self.grad_scaler.get_scale())
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def state_dict(self):
        state = super().state_dict()
        state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
