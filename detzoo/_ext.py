"""Loads the compiled operators (`detzoo._C`) on first use.

`import detzoo` never needs the extension; the first call of an op does. If the extension is
missing or was built against another torch, that call raises one error saying how to rebuild,
instead of silently falling back to a slower Python path.
"""
import importlib

import torch

_loaded = False
_on_load = []

_HOW_TO_BUILD = (
    "Build it from the repository root with `make install` (or "
    "`pip install --no-build-isolation -e .`; a C++ compiler is needed, and FORCE_CUDA=1 adds "
    "the CUDA kernels)."
)


def on_load(fn):
    """Register `fn` to run once the extension is loaded (autograd / fake kernel registration)."""
    _on_load.append(fn)
    if _loaded:
        fn()
    return fn


def _check_version(ext):
    built = getattr(ext, "built_with_torch", "unknown")
    running = torch.__version__.split("+")[0]
    if built != running:
        raise RuntimeError(
            f"detzoo._C was built against torch {built} but torch {running} is running; "
            f"rebuild the extension. {_HOW_TO_BUILD}"
        )


def load():
    """Import detzoo._C once and return `torch.ops.detzoo`."""
    global _loaded
    if not _loaded:
        try:
            ext = importlib.import_module("detzoo._C")
        except ImportError as e:
            raise RuntimeError(f"detzoo's compiled operators (detzoo._C) are not built: {e}. {_HOW_TO_BUILD}") from e
        _check_version(ext)
        _loaded = True
        for fn in _on_load:
            fn()
    return torch.ops.detzoo


def cuda_built():
    """Whether the extension contains the CUDA kernels."""
    load()
    return bool(importlib.import_module("detzoo._C").with_cuda)
