"""Training: the loop and its hooks (train_loop, hooks), the standard workflow built from a
config (defaults: DefaultTrainer, DefaultPredictor, argument parsing, set-up) and
distributed launching (launch).

`defaults` pulls in the model zoo (detzoo.modeling); it is imported on first access to one
of its names, so that processes needing only the loop or `launch` (e.g. the workers that
`launch` spawns before they build anything) start faster.
"""
import importlib

from .hooks import *  # noqa: F401,F403
from .hooks import __all__ as _hooks_all
from .launch import DEFAULT_TIMEOUT, launch
from .train_loop import AMPTrainer, HookBase, SimpleTrainer, TrainerBase

_DEFAULTS_NAMES = ("create_ddp_model", "default_argument_parser", "default_setup", "default_writers",
                   "DefaultPredictor", "DefaultTrainer")

__all__ = ["DEFAULT_TIMEOUT", "launch", "HookBase", "TrainerBase", "SimpleTrainer", "AMPTrainer",
           *_hooks_all, *_DEFAULTS_NAMES]


def __getattr__(name):
    if name in _DEFAULTS_NAMES or name == "defaults":
        defaults = importlib.import_module(".defaults", __name__)
        return defaults if name == "defaults" else getattr(defaults, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
