"""EventStorage: where training code records scalars, images and histograms per iteration.

Models call `get_event_storage().put_scalar(...)` (e.g. the RPN logs how many anchors were
positive); the trainer's writers read the storage periodically. Storages nest as a stack, so
`with EventStorage(start_iter):` makes one current for the code inside.
"""
from collections import defaultdict
from contextlib import contextmanager

import torch
from fvcore.common.history_buffer import HistoryBuffer

__all__ = ["EventStorage", "get_event_storage", "has_event_storage"]

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
