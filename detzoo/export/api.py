"""Export entry points shared by tools/export_model.py and user code."""
from typing import BinaryIO, Callable, Dict, Optional, Union

import torch
from torch import nn

from detzoo.modeling import GeneralizedRCNN

from .flatten import TracingAdapter
from .onnx_symbolics import MIN_OPSET, register_onnx_symbolics

__all__ = ["DEFAULT_ONNX_OPSET", "export_onnx", "rcnn_inference_without_postprocess", "tracing_inference_func"]

DEFAULT_ONNX_OPSET = 17


def rcnn_inference_without_postprocess(model: GeneralizedRCNN, inputs):
    """R-CNN inference for export: detections at the network input size, masks still as the
    (R, 1, M, M) per-box probabilities (pasting them into the image is left to the caller,
    e.g. `detector_postprocess`)."""
    return [{"instances": instances} for instances in model.inference(inputs, do_postprocess=False)]


def tracing_inference_func(model: nn.Module) -> Optional[Callable]:
    """The `inference_func` for `TracingAdapter` that suits `model` (None: call the model)."""
    if isinstance(model, GeneralizedRCNN):
        return rcnn_inference_without_postprocess
    return None


def export_onnx(
    adapter: TracingAdapter,
    f: Union[str, BinaryIO],
    opset_version: int = DEFAULT_ONNX_OPSET,
    input_names=("image",),
    dynamic_axes: Optional[Dict[str, Dict[int, str]]] = None,
) -> None:
    """Export a `TracingAdapter` to ONNX with the TorchScript-based exporter (dynamo=False),
    with detzoo's ops mapped to ONNX ones (see `onnx_symbolics`).

    The graph is traced on `adapter.flattened_inputs`; decode the ONNX outputs with
    `adapter.outputs_schema`.

    Args:
        dynamic_axes: as in `torch.onnx.export`. Default: the last two dimensions (height and
            width) of every input of 3 or more dimensions are left free, so the model takes
            images of any size (the number of detections is always free).
    """
    if opset_version < MIN_OPSET:
        raise ValueError(f"export_onnx: opset_version must be at least {MIN_OPSET} (RoiAlign with "
                         f"coordinate_transformation_mode), got {opset_version}")
    register_onnx_symbolics()
    num_inputs = len(adapter.flattened_inputs)
    names = list(input_names)[:num_inputs] + [f"input_{i}" for i in range(len(input_names), num_inputs)]
    if dynamic_axes is None:
        dynamic_axes = {
            name: {x.dim() - 2: f"{name}_height", x.dim() - 1: f"{name}_width"}
            for name, x in zip(names, adapter.flattened_inputs)
            if x.dim() >= 3
        }
    torch.onnx.export(adapter, adapter.flattened_inputs, f, dynamo=False, opset_version=opset_version,
                      input_names=names, dynamic_axes=dynamic_axes)
