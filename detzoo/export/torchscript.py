"""Helpers for TorchScript models: saving them with a readable dump of their code and graph."""
import os

import torch

from detzoo.utils.file_io import PathManager

__all__ = ["dump_torchscript_IR", "save_torchscript"]


def _code_of(module: torch.jit.ScriptModule) -> str:
    """The Python-like code of `module` and of every submodule that has its own forward."""
    parts = []
    for name, submodule in [("", module)] + list(module.named_modules())[1:]:
        code = getattr(submodule, "code", None) if isinstance(submodule, torch.jit.ScriptModule) else None
        if code:
            parts.append(f"# --- {name or type(module).__name__} ---\n{code}")
    return "\n".join(parts)


def dump_torchscript_IR(model, dir: str) -> None:
    """Write `model_ts_code.txt` (the TorchScript code) and `model_ts_IR.txt` (the inlined
    graph) of a traced or scripted `model` into `dir`, to read what was exported."""
    PathManager.mkdirs(dir)
    if isinstance(model, torch.jit.ScriptModule):
        code = _code_of(model)
        graph = model.inlined_graph if hasattr(model, "inlined_graph") else model.graph
    else:  # ScriptFunction
        code, graph = model.code, model.graph
    with PathManager.open(os.path.join(dir, "model_ts_code.txt"), "w") as f:
        f.write(code)
    with PathManager.open(os.path.join(dir, "model_ts_IR.txt"), "w") as f:
        f.write(str(graph))


def save_torchscript(model, dir: str, filename: str = "model.ts") -> str:
    """`torch.jit.save` `model` as dir/filename, with its IR dumps beside; returns the path."""
    PathManager.mkdirs(dir)
    path = os.path.join(dir, filename)
    with PathManager.open(path, "wb") as f:
        torch.jit.save(model, f)
    dump_torchscript_IR(model, dir)
    return path
