"""Logging set-up: colored console output on the main process, a log file per rank, and
helpers to log a message only the first / every N times."""
import atexit
import functools
import logging
import os
import sys
import time
from collections import Counter

from tabulate import tabulate
from termcolor import colored

from .file_io import PathManager

__all__ = ["setup_logger", "log_first_n", "log_every_n", "log_every_n_seconds", "create_small_table"]

D2_LOG_BUFFER_SIZE_KEY = "DETZOO_LOG_BUFFER_SIZE"


class _ColorfulFormatter(logging.Formatter):
    def __init__(self, *args, root_name, abbrev_name=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._root_name = root_name + "."
        self._abbrev_name = (abbrev_name or root_name) + "."

    def formatMessage(self, record):
        record.name = record.name.replace(self._root_name, self._abbrev_name)
        message = super().formatMessage(record)
        if record.levelno == logging.WARNING:
            prefix = colored("WARNING", "red", attrs=["blink"])
        elif record.levelno in (logging.ERROR, logging.CRITICAL):
            prefix = colored("ERROR", "red", attrs=["blink", "underline"])
        else:
            return message
        return prefix + " " + message


@functools.lru_cache()  # the same logger is set up once, however often this is called
def setup_logger(output=None, distributed_rank=0, *, color=True, name="detzoo", abbrev_name=None,
                 enable_propagation=False, configure_stdout=True):
    """Configure logger `name`: console output on rank 0, and a file if `output` is given (a
    directory gets `log.txt`; ranks > 0 write `log.txt.rank<N>`).

    Returns:
        logging.Logger
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = enable_propagation
    abbrev_name = "dz" if abbrev_name is None and name == "detzoo" else (abbrev_name or name)
    plain = logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s", datefmt="%m/%d %H:%M:%S")
    if configure_stdout and distributed_rank == 0:
        handler = logging.StreamHandler(stream=sys.stdout)
        handler.setLevel(logging.DEBUG)
        if color:
            handler.setFormatter(_ColorfulFormatter(colored("[%(asctime)s %(name)s]: ", "green") + "%(message)s",
                                                    datefmt="%m/%d %H:%M:%S", root_name=name,
                                                    abbrev_name=str(abbrev_name)))
        else:
            handler.setFormatter(plain)
        logger.addHandler(handler)
    if output is not None:
        filename = output if output.endswith((".txt", ".log")) else os.path.join(output, "log.txt")
        if distributed_rank > 0:
            filename = f"{filename}.rank{distributed_rank}"
        PathManager.mkdirs(os.path.dirname(filename) or ".")
        handler = logging.StreamHandler(_cached_log_stream(filename))
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(plain)
        logger.addHandler(handler)
    return logger


@functools.lru_cache(maxsize=None)
def _cached_log_stream(filename):
    # One stream per file, shared by every logger that writes there.
    stream = PathManager.open(filename, "a", buffering=int(os.environ.get(D2_LOG_BUFFER_SIZE_KEY, "1024")))
    atexit.register(stream.close)
    return stream


def _caller():
    """(module name, (file, line, function)) of the code that called the log helper."""
    frame = sys._getframe(2)
    while frame:
        code = frame.f_code
        if os.path.join("utils", "logger.") not in code.co_filename:
            name = frame.f_globals["__name__"]
            return ("detzoo" if name == "__main__" else name), (code.co_filename, frame.f_lineno, code.co_name)
        frame = frame.f_back
    return "detzoo", None


_LOG_COUNTER = Counter()
_LOG_TIMER = {}


def log_first_n(lvl, msg, n=1, *, name=None, key="caller"):
    """Log `msg` only the first `n` times per call site (key "caller"), per message ("message"),
    or per both."""
    if isinstance(key, str):
        key = (key,)
    caller_module, caller_key = _caller()
    hash_key = ()
    if "caller" in key:
        hash_key += caller_key
    if "message" in key:
        hash_key += (msg,)
    _LOG_COUNTER[hash_key] += 1
    if _LOG_COUNTER[hash_key] <= n:
        logging.getLogger(name or caller_module).log(lvl, msg)


def log_every_n(lvl, msg, n=1, *, name=None):
    """Log `msg` once every `n` calls from the same call site."""
    caller_module, key = _caller()
    _LOG_COUNTER[key] += 1
    if n == 1 or _LOG_COUNTER[key] % n == 1:
        logging.getLogger(name or caller_module).log(lvl, msg)


def log_every_n_seconds(lvl, msg, n=1, *, name=None):
    """Log `msg` at most once every `n` seconds from the same call site."""
    caller_module, key = _caller()
    last = _LOG_TIMER.get(key)
    now = time.time()
    if last is None or now - last >= n:
        logging.getLogger(name or caller_module).log(lvl, msg)
        _LOG_TIMER[key] = now


def create_small_table(small_dict):
    """A one-row table of a small dict (keys as headers), e.g. AP metrics."""
    keys, values = tuple(zip(*small_dict.items()))
    return tabulate([values], headers=keys, tablefmt="pipe", floatfmt=".3f", stralign="center", numalign="center")
