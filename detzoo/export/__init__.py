"""Exporting detzoo models for deployment: flattening rich inputs/outputs for tracing
(`TracingAdapter`), ONNX symbolic functions for detzoo's compiled ops, TorchScript helpers."""
from .api import DEFAULT_ONNX_OPSET, export_onnx, rcnn_inference_without_postprocess, tracing_inference_func
from .flatten import TracingAdapter, flatten_to_tuple
from .onnx_symbolics import register_onnx_symbolics
from .torchscript import dump_torchscript_IR, save_torchscript
from .torchscript_patch import patch_builtin_len

__all__ = [
    "DEFAULT_ONNX_OPSET",
    "TracingAdapter",
    "dump_torchscript_IR",
    "export_onnx",
    "flatten_to_tuple",
    "patch_builtin_len",
    "rcnn_inference_without_postprocess",
    "register_onnx_symbolics",
    "save_torchscript",
    "tracing_inference_func",
]
