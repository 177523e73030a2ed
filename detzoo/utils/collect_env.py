"""The environment report: versions, build and hardware a run depends on.

`collect_env_info()` is logged by `default_setup` at the start of every run;
`python -m detzoo.utils.collect_env` prints it (paste it into bug reports). `cpu_info()` is the
one reader of the CPU's model name and instruction-set flags: the benchmarks print it too,
since CPU timings are only comparable between runs on the same kind of CPU.
"""
import importlib
import os
import platform
import subprocess
import sys
from typing import FrozenSet, Tuple

import numpy as np
import torch
from tabulate import tabulate

__all__ = ["collect_env_info", "cpu_info", "cpu_summary"]

# The flags that decide which kernels run fast: AVX2/FMA everywhere, AVX-512 and AMX where
# present (bfloat16 speed needs amx_bf16 or avx512_bf16).
_VECTOR_FLAG_PREFIXES = ("avx512", "amx")
_VECTOR_FLAGS = ("avx2", "fma")
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpu_info(cpuinfo_path: str = "/proc/cpuinfo") -> Tuple[str, FrozenSet[str]]:
    """The CPU's model name and the set of its feature flags (empty where /proc/cpuinfo is
    missing, e.g. on macOS: then the model is platform.processor())."""
    model, flags = "", frozenset()
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = frozenset(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model or platform.processor() or "unknown", flags


def cpu_summary(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    """One line: model name, the vector/matrix flags present, and whether bfloat16 runs in
    hardware, e.g. "AMD EPYC 7B13 (avx2 fma; bf16 hardware: no)"."""
    model, flags = cpu_info(cpuinfo_path)
    wanted = sorted(f for f in flags if f.startswith(_VECTOR_FLAG_PREFIXES) or f in _VECTOR_FLAGS)
    bf16 = "yes" if BF16_FLAGS & flags else "no"
    return f"{model} ({' '.join(wanted) or 'no avx2/avx512/amx'}; bf16 hardware: {bf16})"


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except ImportError:
        return "not installed"


def _compiler() -> str:
    try:
        return subprocess.check_output(["c++", "--version"], text=True, stderr=subprocess.DEVNULL).splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "not found"


def collect_env_info() -> str:
    """A table of the versions and hardware a run depends on."""
    import detzoo

    rows = [("sys.platform", sys.platform), ("Python", sys.version.replace("\n", "")),
            ("numpy", np.__version__), ("detzoo", f"{detzoo.__version__} @{os.path.dirname(detzoo.__file__)}")]
    try:
        from detzoo import _C

        rows.append(("detzoo._C", f"built with torch {_C.built_with_torch}, CUDA kernels: {bool(_C.with_cuda)}"))
    except ImportError as e:
        rows.append(("detzoo._C", f"not built ({e})"))
    rows += [("Compiler", _compiler()),
             ("PyTorch", f"{torch.__version__} @{os.path.dirname(torch.__file__)}"),
             ("PyTorch debug build", torch.version.debug), ("CPU", cpu_summary()),
             ("CPU threads", torch.get_num_threads()), ("CUDA available", torch.cuda.is_available())]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            rows.append((f"GPU {i}", torch.cuda.get_device_name(i)))
        rows.append(("CUDA (torch)", torch.version.cuda))
    for module in ("torchvision", "fvcore", "iopath", "pycocotools", "cv2"):
        rows.append((module, _version(module)))
    return tabulate(rows)


if __name__ == "__main__":
    print(collect_env_info())
