"""The evaluator interface and `inference_on_dataset`, the loop that runs a model over a test
loader, feeds an evaluator and measures the inference time the model-zoo tables report."""
import datetime
import logging
import time
from collections import OrderedDict, abc
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from detzoo.utils.comm import get_world_size, is_main_process
from detzoo.utils.logger import log_every_n_seconds

__all__ = ["DatasetEvaluator", "DatasetEvaluators", "inference_on_dataset", "inference_context"]

logger = logging.getLogger(__name__)

# Iterations left out of the timing: the first ones pay for cuDNN autotuning, memory-pool growth
# and lazy initialisation (Detectron2's count, so that our s/iter figures compare with its tables).
_NUM_WARMUP_ITERS = 5


class DatasetEvaluator:
    """Accumulates what it needs from (inputs, outputs) pairs, then computes metrics.

    `inference_on_dataset` calls `reset()` once, `process(inputs, outputs)` for every batch, and
    `evaluate()` at the end.
    """

    def reset(self):
        """Forget everything processed so far; called before each round of evaluation."""

    def process(self, inputs, outputs):
        """Take in one batch.

        Args:
            inputs (list[dict]): what the model was called with (one dict per image, with
                "image_id", "file_name", "height", "width", ...).
            outputs (list[dict]): what the model returned for `inputs` ("instances",
                "sem_seg", "panoptic_seg", "proposals", ...).
        """

    def evaluate(self):
        """Compute the metrics of everything processed since `reset()`.

        Returns:
            dict: task name -> {metric name: value}, e.g. {"bbox": {"AP": 40.2, ...}}; the
            training loop and `print_csv_format` expect this shape. Processes other than the
            main one may return None or {}.
        """


class DatasetEvaluators(DatasetEvaluator):
    """Several evaluators run as one; their results are merged (task names must differ)."""

    def __init__(self, evaluators):
        """
        Args:
            evaluators (list[DatasetEvaluator]): may be empty (inference timing only).
        """
        super().__init__()
        self._evaluators = list(evaluators)

    def reset(self):
        for evaluator in self._evaluators:
            evaluator.reset()

    def process(self, inputs, outputs):
        for evaluator in self._evaluators:
            evaluator.process(inputs, outputs)

    def evaluate(self):
        results = OrderedDict()
        for evaluator in self._evaluators:
            result = evaluator.evaluate()
            if not is_main_process() or not result:
                continue
            for task, metrics in result.items():
                if task in results:
                    raise ValueError(f"two evaluators of DatasetEvaluators both return results for task {task!r} "
                                     f"({type(evaluator).__name__} is the second); task names must be unique")
                results[task] = metrics
        return results


def inference_on_dataset(model, data_loader, evaluator, callbacks=None):
    """Run `model` on every batch of `data_loader` in eval mode without gradients, feed the
    evaluator, log progress and timing, and return the evaluator's results.

    The time of the first min(5, len(data_loader) - 1) iterations is not counted. At the end
    two lines are logged (their format is parsed by scripts):

        Total inference time: 0:01:02.5 (0.052 s / iter per device, on 8 devices)
        Total inference pure compute time: 0:00:50 (0.042 s / iter per device, on 8 devices)

    the first measured over the whole loop (data loading and evaluator included), the second
    only over the `model(inputs)` calls (synchronised with the GPU). With a test loader of one
    image per batch, s / iter is the model zoo's "inference time (s/im)".

    Args:
        model (callable): usually an nn.Module, put in eval mode for the loop and restored to its
            previous mode afterwards; anything else is just called.
        data_loader (iterable with len()): yields the model's inputs (list[dict]).
        evaluator (DatasetEvaluator, list[DatasetEvaluator] or None): None only times the model.
        callbacks (dict[str, callable] or None): zero-argument functions called at "on_start",
            "before_inference", "after_inference" and "on_end".

    Returns:
        dict: `evaluator.evaluate()`, or {} where it returned None (e.g. on non-main processes).
    """
    evaluator = _as_evaluator(evaluator)
    total = _loader_length(data_loader)
    callbacks = _check_callbacks(callbacks)
    logger.info(f"Start inference on {total} batches")
    evaluator.reset()

    timer = _InferenceTimer(total)
    with ExitStack() as stack:
        if isinstance(model, nn.Module):
            stack.enter_context(inference_context(model))
        stack.enter_context(torch.no_grad())
        callbacks["on_start"]()
        timer.start_data()
        for idx, inputs in enumerate(data_loader):
            timer.data_done(idx)
            callbacks["before_inference"]()
            outputs = model(inputs)
            callbacks["after_inference"]()
            _synchronize_device()
            timer.compute_done()
            evaluator.process(inputs, outputs)
            timer.eval_done()
            timer.log_progress(idx)
            timer.start_data()
        callbacks["on_end"]()

    timer.log_totals(get_world_size())
    results = evaluator.evaluate()
    return {} if results is None else results


@contextmanager
def inference_context(model):
    """Put `model` (nn.Module) in eval mode for the duration of the block, then restore its
    previous training mode, even if the block raises."""
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def _as_evaluator(evaluator):
    if evaluator is None:
        return DatasetEvaluators([])
    if isinstance(evaluator, (abc.MutableSequence, tuple)):
        return DatasetEvaluators(evaluator)
    if not all(hasattr(evaluator, name) for name in ("reset", "process", "evaluate")):
        raise TypeError("inference_on_dataset: evaluator must be a DatasetEvaluator (reset/process/evaluate), "
                        f"a list of them or None, got {type(evaluator).__name__}")
    return evaluator


def _loader_length(data_loader):
    try:
        return len(data_loader)
    except TypeError:
        raise TypeError(f"inference_on_dataset needs a data loader with a fixed length (len()), got "
                        f"{type(data_loader).__name__}, which has none") from None


def _check_callbacks(callbacks):
    names = ("on_start", "before_inference", "after_inference", "on_end")
    callbacks = dict(callbacks or {})
    unknown = sorted(set(callbacks) - set(names))
    if unknown:
        raise ValueError(f"inference_on_dataset: unknown callbacks {unknown}; expected some of {list(names)}")
    return {name: callbacks.get(name) or (lambda: None) for name in names}


def _synchronize_device():
    # Asynchronous CUDA kernels would otherwise be timed as part of the next step.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class _InferenceTimer:
    """Per-iteration data / compute / evaluation times, restarted after the warm-up iterations."""

    def __init__(self, total):
        self.total = total
        self.num_warmup = max(0, min(_NUM_WARMUP_ITERS, total - 1))
        self._reset()

    def _reset(self):
        self.start_time = time.perf_counter()
        self.data_time = self.compute_time = self.eval_time = 0.0
        self.iters = 0

    def start_data(self):
        self._mark = time.perf_counter()

    def data_done(self, idx):
        if idx == self.num_warmup:
            self._reset()
            self._mark = time.perf_counter()
        else:
            self.data_time += self._lap()

    def compute_done(self):
        self.compute_time += self._lap()

    def eval_done(self):
        self.eval_time += self._lap()
        self.iters += 1

    def _lap(self):
        now = time.perf_counter()
        elapsed, self._mark = now - self._mark, now
        return elapsed

    def log_progress(self, idx):
        iters = max(self.iters, 1)
        compute_per_iter = self.compute_time / iters
        if idx < 2 * self.num_warmup and compute_per_iter <= 5:
            return
        total_per_iter = (time.perf_counter() - self.start_time) / iters
        eta = datetime.timedelta(seconds=int(total_per_iter * (self.total - idx - 1)))
        log_every_n_seconds(
            logging.INFO,
            f"Inference done {idx + 1}/{self.total}. Dataloading: {self.data_time / iters:.4f} s/iter. "
            f"Inference: {compute_per_iter:.4f} s/iter. Eval: {self.eval_time / iters:.4f} s/iter. "
            f"Total: {total_per_iter:.4f} s/iter. ETA={eta}",
            n=5,
        )

    def log_totals(self, num_devices):
        # Measured on this process alone, before any synchronisation with the others.
        total_time = time.perf_counter() - self.start_time
        if self.iters == 0:
            logger.warning("inference_on_dataset: the data loader yielded no batch; no inference time to report")
            return
        logger.info(
            f"Total inference time: {datetime.timedelta(seconds=total_time)} "
            f"({total_time / self.iters:.6f} s / iter per device, on {num_devices} devices)"
        )
        logger.info(
            f"Total inference pure compute time: {datetime.timedelta(seconds=int(self.compute_time))} "
            f"({self.compute_time / self.iters:.6f} s / iter per device, on {num_devices} devices)"
        )
