"""EventStorage: where training code records scalars, images and histograms per iteration.

Models call `get_event_storage().put_scalar(...)` (e.g. the RPN logs how many anchors were
positive); the trainer's writers read the storage periodically. Storages nest as a stack, so
`with EventStorage(start_iter):` makes one current for the code inside.

Writers (`EventWriter` subclasses) turn the storage into output: `CommonMetricPrinter` (the
console line), `JSONWriter` (`metrics.json`, one line per iteration), `TensorboardXWriter`,
and `WandbWriter` / `MLflowWriter` when those packages are installed.
"""
import datetime
import json
import logging
import os
import re
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Dict, Optional

import torch
from fvcore.common.history_buffer import HistoryBuffer

from .file_io import PathManager

__all__ = ["EventStorage", "get_event_storage", "has_event_storage", "EventWriter", "JSONWriter",
           "CommonMetricPrinter", "TensorboardXWriter", "WandbWriter", "MLflowWriter"]

_STORAGE_STACK = []


def get_event_storage():
    """The innermost active EventStorage. Raises if called outside `with EventStorage(...)`."""
    if not _STORAGE_STACK:
        raise RuntimeError("get_event_storage() has to be called inside a 'with EventStorage(...)' context")
    return _STORAGE_STACK[-1]


def has_event_storage():
    return bool(_STORAGE_STACK)


class EventStorage:
    """Per-iteration metrics with their history.

    Scalars keep a `HistoryBuffer` of (value, iteration) pairs; `latest()` gives the most recent
    value of each, `histories()` the buffers, `smoothing_hints()` whether a writer should
    smooth each one (losses yes, e.g. a learning rate no).
    """

    def __init__(self, start_iter=0):
        self._history = defaultdict(HistoryBuffer)
        self._smoothing_hints = {}
        self._latest_scalars = {}
        self._iter = start_iter
        self._current_prefix = ""
        self._vis_data = []
        self._histograms = []

    # ---------------------------------------------------------------- scalars
    def put_scalar(self, name, value, smoothing_hint=True, cur_iter=None):
        """Record `value` (number or 0-dim tensor) for `name` at the current (or given) iteration."""
        name = self._current_prefix + name
        cur_iter = self._iter if cur_iter is None else cur_iter
        value = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
        self._history[name].update(value, cur_iter)
        self._latest_scalars[name] = (value, cur_iter)
        previous_hint = self._smoothing_hints.get(name)
        if previous_hint is not None and previous_hint != smoothing_hint:
            raise ValueError(f"scalar {name!r} was recorded with smoothing_hint={previous_hint} before "
                             f"and smoothing_hint={smoothing_hint} now")
        self._smoothing_hints[name] = smoothing_hint

    def put_scalars(self, *, smoothing_hint=True, cur_iter=None, **kwargs):
        for name, value in kwargs.items():
            self.put_scalar(name, value, smoothing_hint=smoothing_hint, cur_iter=cur_iter)

    def history(self, name):
        if name not in self._history:
            raise KeyError(f"no history for metric {name!r}; recorded: {sorted(self._history)}")
        return self._history[name]

    def histories(self):
        return self._history

    def latest(self):
        """{name: (value, iteration)} of the most recent value of every scalar."""
        return self._latest_scalars

    def latest_with_smoothing_hint(self, window_size=20):
        """Like latest(), but values marked for smoothing are the median over `window_size`."""
        result = {}
        for name, (value, itr) in self._latest_scalars.items():
            if self._smoothing_hints[name]:
                value = self._history[name].median(window_size)
            result[name] = (value, itr)
        return result

    def smoothing_hints(self):
        return self._smoothing_hints

    # ---------------------------------------------------------------- images, histograms
    def put_image(self, img_name, img_tensor):
        """img_tensor (Tensor[3, H, W], float in [0, 1] or uint8), shown by the Tensorboard writer."""
        self._vis_data.append((img_name, img_tensor, self._iter))

    def clear_images(self):
        self._vis_data = []

    def put_histogram(self, hist_name, hist_tensor, bins=1000):
        values = hist_tensor.detach().float().reshape(-1).cpu()
        lo, hi = float(values.min()), float(values.max())
        counts = torch.histc(values, bins=bins, min=lo, max=hi)
        edges = torch.linspace(lo, hi, bins + 1)
        self._histograms.append(dict(
            tag=hist_name, min=lo, max=hi, num=len(values), sum=float(values.sum()),
            sum_squares=float((values ** 2).sum()), bucket_limits=edges[1:].tolist(),
            bucket_counts=counts.tolist(), global_step=self._iter,
        ))

    def clear_histograms(self):
        self._histograms = []

    # ---------------------------------------------------------------- iteration
    def step(self):
        """Kept for compatibility: the trainer sets `iter` directly."""
        self._iter += 1

    @property
    def iter(self):
        return self._iter

    @iter.setter
    def iter(self, value):
        self._iter = int(value)

    @property
    def iteration(self):  # Detectron2 also exposes this name
        return self._iter

    @contextmanager
    def name_scope(self, name):
        """Prefix the scalar names recorded inside with `name/`."""
        old_prefix = self._current_prefix
        self._current_prefix = name.rstrip("/") + "/"
        try:
            yield
        finally:
            self._current_prefix = old_prefix

    def __enter__(self):
        _STORAGE_STACK.append(self)
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        if not _STORAGE_STACK or _STORAGE_STACK[-1] is not self:
            raise RuntimeError("EventStorage contexts exited out of order")
        _STORAGE_STACK.pop()


# ==================================================================================== writers
class EventWriter:
    """Reads the current EventStorage and writes its content somewhere."""

    def write(self):
        raise NotImplementedError

    def close(self):
        pass


def _scalars_by_iteration(storage, window_size, after_iter) -> Dict[int, Dict[str, float]]:
    """{iteration: {name: value}} of the scalars recorded after iteration `after_iter`,
    smoothed (median over `window_size`) where the storage says so."""
    by_iter = defaultdict(dict)
    for name, (value, itr) in storage.latest_with_smoothing_hint(window_size).items():
        if itr > after_iter:
            by_iter[itr][name] = value
    return dict(sorted(by_iter.items()))


class JSONWriter(EventWriter):
    """Appends the scalars to a file of JSON lines, one line per iteration that has new values:

        {"data_time": 0.004, "iteration": 19, "loss_cls": 0.52, "lr": 0.0199, "total_loss": 1.43}

    Read it back with `[json.loads(line) for line in open(path)]`. Scalars are smoothed
    according to their smoothing hint; each line is flushed and fsync'ed, so the file is
    complete up to the last write even if training dies.
    """

    def __init__(self, json_file, window_size=20):
        """
        Args:
            json_file (str): path of the file; appended to if it exists.
            window_size (int): median window of smoothed scalars.
        """
        self._file_handle = PathManager.open(json_file, "a")
        self._window_size = window_size
        self._last_write = -1

    def write(self):
        storage = get_event_storage()
        new_scalars = _scalars_by_iteration(storage, self._window_size, self._last_write)
        for itr, scalars in new_scalars.items():
            self._file_handle.write(json.dumps({"iteration": itr, **scalars}, sort_keys=True) + "\n")
        if not new_scalars:
            return
        self._last_write = max(new_scalars)
        self._file_handle.flush()
        try:
            os.fsync(self._file_handle.fileno())
        except (AttributeError, OSError):  # remote file objects have no descriptor
            pass

    def close(self):
        self._file_handle.close()


class TensorboardXWriter(EventWriter):
    """Writes scalars, images (`put_image`) and histograms (`put_histogram`) to tensorboard
    event files with `torch.utils.tensorboard.SummaryWriter`, created on the first write."""

    def __init__(self, log_dir: str, window_size: int = 20, **kwargs):
        """
        Args:
            log_dir (str): directory of the event files.
            window_size (int): median window of smoothed scalars.
            kwargs: passed to `SummaryWriter(log_dir, **kwargs)`.
        """
        self._window_size = window_size
        self._writer_args = {"log_dir": log_dir, **kwargs}
        self._writer = None
        self._last_write = -1

    def _summary_writer(self):
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError(f"TensorboardXWriter needs the tensorboard package (pip install tensorboard): "
                                  f"{e}") from e
            self._writer = SummaryWriter(**self._writer_args)
        return self._writer

    def write(self):
        storage = get_event_storage()
        writer = self._summary_writer()
        new_scalars = _scalars_by_iteration(storage, self._window_size, self._last_write)
        for itr, scalars in new_scalars.items():
            for name, value in scalars.items():
                writer.add_scalar(name, value, itr)
        if new_scalars:
            self._last_write = max(new_scalars)
        # Images and histograms are written once, then dropped from the storage.
        for img_name, img, step_num in storage._vis_data:
            writer.add_image(img_name, img, step_num)
        storage.clear_images()
        for params in storage._histograms:
            writer.add_histogram_raw(**params)
        storage.clear_histograms()

    def close(self):
        if self._writer is not None:
            self._writer.close()


class CommonMetricPrinter(EventWriter):
    """Logs one line of the metrics every trainer has:

        eta: 0:12:05  iter: 39  total_loss: 1.712  loss_cls: 0.6381 ...  time: 0.8621  last_time: 0.8502
        data_time: 0.0040  last_data_time: 0.0031  lr: 0.0039  max_mem: 2311M

    `time` and `data_time` are medians over the window; `max_mem` is the peak CUDA memory
    allocated, or on CPU the peak resident memory of this process.
    """

    def __init__(self, max_iter: Optional[int] = None, window_size: int = 20):
        """
        Args:
            max_iter (int): the training length, for the ETA; None prints no ETA.
            window_size (int): median window of the losses and times.
        """
        self.logger = logging.getLogger("detzoo.utils.events")
        self._max_iter = max_iter
        self._window_size = window_size
        self._last_write = None  # (iteration, time.perf_counter()) of the previous write

    def _get_eta(self, storage) -> Optional[str]:
        if self._max_iter is None:
            return None
        iteration = storage.iter
        if "time" in storage.histories():
            eta_seconds = storage.history("time").median(1000) * (self._max_iter - iteration - 1)
            storage.put_scalar("eta_seconds", eta_seconds, smoothing_hint=False)
            return str(datetime.timedelta(seconds=int(eta_seconds)))
        # No iteration timer: estimate from the pace between two writes.
        eta = None
        now = time.perf_counter()
        if self._last_write is not None and iteration > self._last_write[0]:
            seconds_per_iter = (now - self._last_write[1]) / (iteration - self._last_write[0])
            eta = str(datetime.timedelta(seconds=int(seconds_per_iter * (self._max_iter - iteration - 1))))
        self._last_write = (iteration, now)
        return eta

    def _recent_median(self, storage, name) -> float:
        """Median of `name` over the values recorded in the last `window_size` iterations."""
        history = storage.history(name)
        recent = sum(1 for _, itr in history.values() if itr > storage.iter - self._window_size)
        return history.median(max(recent, 1))

    def write(self):
        storage = get_event_storage()
        if storage.iter == self._max_iter:
            # Training finished: the trainer's iteration is past the last step, nothing new.
            return
        histories = storage.histories()
        fields = []
        eta = self._get_eta(storage)
        if eta:
            fields.append(f"eta: {eta}")
        fields.append(f"iter: {storage.iter}")
        fields += [f"{name}: {self._recent_median(storage, name):.4g}" for name in histories if "loss" in name]
        fields += [f"{name}: {self._recent_median(storage, name):.4g}" for name in histories
                   if name.startswith("[metric]")]
        for name in ("time", "data_time"):
            if name in histories:
                fields.append(f"{name}: {histories[name].avg(self._window_size):.4f}")
                fields.append(f"last_{name}: {histories[name].latest():.4f}")
        if "lr" in histories:
            fields.append(f"lr: {histories['lr'].latest():.5g}")
        fields.append(f"max_mem: {_max_memory_mb():.0f}M")
        self.logger.info("  ".join(fields))


def _max_memory_mb() -> float:
    """Peak CUDA memory allocated, or without CUDA the peak resident set of this process."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 1024 / 1024
    try:
        import resource
    except ImportError:  # not on POSIX
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


class WandbWriter(EventWriter):
    """Logs the scalars to Weights & Biases (needs the `wandb` package)."""

    def __init__(self, project: Optional[str] = None, config=None, window_size: int = 20, **init_kwargs):
        """
        Args:
            project (str): W&B project; None uses $WANDB_PROJECT.
            config: the run's config (a CfgNode or dict), shown in the W&B UI.
            window_size (int): median window of smoothed scalars.
            init_kwargs: passed to `wandb.init`.
        """
        import wandb

        self._wandb = wandb
        if config is not None and hasattr(config, "dump"):
            import yaml

            config = yaml.safe_load(config.dump())
        self._run = wandb.run or wandb.init(project=project, config=config, **init_kwargs)
        self._window_size = window_size
        self._last_write = -1

    def write(self):
        new_scalars = _scalars_by_iteration(get_event_storage(), self._window_size, self._last_write)
        for itr, scalars in new_scalars.items():
            self._run.log(scalars, step=itr)
        if new_scalars:
            self._last_write = max(new_scalars)

    def close(self):
        self._run.finish()


# MLflow accepts letters, digits and "_-. /" in metric names.
_MLFLOW_INVALID_CHARS = re.compile(r"[^0-9A-Za-z_\-. /]")


class MLflowWriter(EventWriter):
    """Logs the scalars to MLflow (needs the `mlflow` package). Uses the active run if there
    is one, otherwise starts a run and ends it on `close()`."""

    def __init__(self, experiment_name: Optional[str] = None, run_name: Optional[str] = None,
                 tracking_uri: Optional[str] = None, window_size: int = 20):
        """
        Args:
            experiment_name (str): None uses $MLFLOW_EXPERIMENT_NAME or MLflow's default.
            run_name (str): name of the run started here.
            tracking_uri (str): None uses $MLFLOW_TRACKING_URI or the local ./mlruns.
            window_size (int): median window of smoothed scalars.
        """
        import mlflow

        self._mlflow = mlflow
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        if experiment_name:
            mlflow.set_experiment(experiment_name)
        self._owns_run = mlflow.active_run() is None
        if self._owns_run:
            mlflow.start_run(run_name=run_name)
        self._window_size = window_size
        self._last_write = -1

    def write(self):
        new_scalars = _scalars_by_iteration(get_event_storage(), self._window_size, self._last_write)
        for itr, scalars in new_scalars.items():
            metrics = {_MLFLOW_INVALID_CHARS.sub("_", name): value for name, value in scalars.items()}
            self._mlflow.log_metrics(metrics, step=itr)
        if new_scalars:
            self._last_write = max(new_scalars)

    def close(self):
        if self._owns_run:
            self._mlflow.end_run()
