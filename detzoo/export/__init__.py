"""Exporting detzoo models for deployment: flattening rich inputs/outputs for tracing
(`TracingAdapter`), ONNX symbolic functions for detzoo's compiled ops, scripting models that
use `Instances` (`scripting_with_instances`), TorchScript helpers."""
from .api import DEFAULT_ONNX_OPSET, export_onnx, rcnn_inference_without_postprocess, tracing_inference_func
from .flatten import TracingAdapter, flatten_to_tuple
from .onnx_symbolics import register_onnx_symbolics
from .torchscript import (
    DEFAULT_SCRIPTING_FIELDS,
    ScriptableAdapter,
    dump_torchscript_IR,
    save_torchscript,
    scripting_with_instances,
)
from .torchscript_patch import freeze_training_mode, patch_builtin_len, patch_instances

__all__ = [
    "DEFAULT_ONNX_OPSET",
    "DEFAULT_SCRIPTING_FIELDS",
    "ScriptableAdapter",
    "TracingAdapter",
    "dump_torchscript_IR",
    "export_onnx",
    "flatten_to_tuple",
    "freeze_training_mode",
    "patch_builtin_len",
    "patch_instances",
    "rcnn_inference_without_postprocess",
    "register_onnx_symbolics",
    "save_torchscript",
    "scripting_with_instances",
    "tracing_inference_func",
]
