"""Patches that let `torch.jit.trace` record shapes which the model reads with `len()`.

`len(tensor)` must return a Python int, so under tracing it freezes the number of boxes of
the sample input into the graph; `tensor.__len__()` returns the traced size instead. While a
`TracingAdapter` runs, the builtin `len` of the modules listed here is replaced by one that
calls `__len__` directly (every object `len` accepts has it).
"""
import builtins
import contextlib
from typing import Iterable, Iterator

__all__ = ["TRACED_LEN_MODULES", "patch_builtin_len"]

# Modules that size tensors with len() of boxes/instances on the inference path.
TRACED_LEN_MODULES = (
    "detzoo.modeling.poolers",
    "detzoo.modeling.roi_heads.roi_heads",
    "detzoo.modeling.roi_heads.fast_rcnn",
    "detzoo.modeling.roi_heads.mask_head",
    "detzoo.modeling.roi_heads.keypoint_head",
)


def _traceable_len(obj):
    return obj.__len__()


@contextlib.contextmanager
def patch_builtin_len(modules: Iterable[str] = ()) -> Iterator[None]:
    """Within the block, `len` in the `TRACED_LEN_MODULES` and `modules` (dotted names)
    returns `obj.__len__()`, a 0-d tensor for tensors being traced."""
    import importlib

    patched = []
    try:
        for name in tuple(TRACED_LEN_MODULES) + tuple(modules):
            module = importlib.import_module(name)
            patched.append((module, module.__dict__.get("len", _MISSING)))
            module.len = _traceable_len
        yield
    finally:
        for module, previous in reversed(patched):
            if previous is _MISSING:
                del module.len
            else:
                module.len = previous


_MISSING = object()
