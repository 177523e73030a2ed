"""Counting the flops, activations and parameters of detzoo models, on top of fvcore's
jit-trace based counters.

Detection models take `list[dict]` and return `Instances`; `TracingAdapter` flattens both so
fvcore can trace them. detzoo's compiled ops get their own handles instead of being reported
as unsupported. fvcore counts one fused multiply-add as one flop; the handles follow suit:

    detzoo::roi_align, detzoo::roi_align_rotated:
        R * C * PH * PW * S * 4   (every output value averages S bilinear samples of 4
        multiply-adds each; S = sampling_ratio ** 2, or 4 (2 x 2) for the adaptive
        sampling_ratio <= 0, whose real count depends on the box sizes, not on shapes)
    detzoo::deform_conv:
        N * Cout * OH * OW * (Cin / groups) * KH * KW      (the convolution itself)
      + N * Cin * OH * OW * KH * KW * (4 + use_mask)      (bilinear sampling of the im2col
                                                           columns, and the modulation)
    detzoo::nms, detzoo::nms_rotated:  N * (N - 1) / 2  (one per pairwise IoU, the worst case)
    detzoo::box_iou_rotated:           N * M            (one per pair)

Activations (fvcore's definition: output elements of the counted ops) of roi_align,
roi_align_rotated and deform_conv are their output sizes.
"""
import typing
from collections import defaultdict
from typing import Any, List

import fvcore.nn
import torch
from fvcore.nn import parameter_count, parameter_count_table
from fvcore.nn.jit_handles import get_shape
from torch import nn

from detzoo.export.flatten import TracingAdapter, flatten_to_tuple

__all__ = [
    "ActivationCountAnalysis",
    "FlopCountAnalysis",
    "activation_count_operators",
    "deform_conv_flop_jit",
    "find_unused_parameters",
    "flop_count_operators",
    "nms_flop_jit",
    "parameter_count",
    "parameter_count_table",
    "roi_align_flop_jit",
]

# Samples per bin counted for ROIAlign's adaptive sampling (sampling_ratio <= 0).
ADAPTIVE_SAMPLES_PER_BIN = 4

# Cheap elementwise / bookkeeping ops: not worth a count, and not worth a warning each.
_IGNORED_OPS = (
    "aten::add",
    "aten::add_",
    "aten::aminmax",
    "aten::batch_norm",
    "aten::clone",
    "aten::constant_pad_nd",
    "aten::div",
    "aten::div_",
    "aten::exp",
    "aten::log2",
    "aten::max_pool2d",
    "aten::meshgrid",
    "aten::mul",
    "aten::mul_",
    "aten::nonzero_numpy",
    "aten::pad",
    "aten::repeat_interleave",
    "aten::relu",
    "aten::relu_",
    "aten::rsub",
    "aten::sigmoid",
    "aten::sigmoid_",
    "aten::softmax",
    "aten::sort",
    "aten::sqrt",
    "aten::sub",
    "aten::topk",
    "aten::upsample_nearest2d",
    "prim::PythonOp",
    "torchvision::nms",
)


def _constant(value) -> Any:
    """The Python value of a constant jit input (None if it is not a constant)."""
    return value.toIValue()


def roi_align_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """Flops of detzoo::roi_align / roi_align_rotated: output elements x samples x 4."""
    num_rois, channels, pooled_h, pooled_w = get_shape(outputs[0])
    sampling_ratio = _constant(inputs[5])
    samples = sampling_ratio**2 if sampling_ratio is not None and sampling_ratio > 0 else ADAPTIVE_SAMPLES_PER_BIN
    return num_rois * channels * pooled_h * pooled_w * samples * 4


def deform_conv_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """Flops of detzoo::deform_conv: the convolution plus the bilinear sampling (and mask)."""
    batch, in_channels = get_shape(inputs[0])[:2]
    out_channels, in_per_group, kernel_h, kernel_w = get_shape(inputs[1])
    out_h, out_w = get_shape(outputs[0])[2:]
    use_mask = bool(_constant(inputs[13]))
    positions = batch * out_h * out_w
    convolution = positions * out_channels * in_per_group * kernel_h * kernel_w
    sampling = positions * in_channels * kernel_h * kernel_w * (4 + int(use_mask))
    return convolution + sampling


def nms_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """Flops of detzoo::nms / nms_rotated: one per pair of boxes."""
    num_boxes = get_shape(inputs[0])[0]
    return num_boxes * (num_boxes - 1) // 2


def _box_iou_rotated_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    return get_shape(inputs[0])[0] * get_shape(inputs[1])[0]


def _output_size_jit(inputs: List[Any], outputs: List[Any]) -> int:
    shape = get_shape(outputs[0])
    count = 1
    for size in shape:
        count *= size
    return count


_FLOP_HANDLES = {
    "detzoo::roi_align": roi_align_flop_jit,
    "detzoo::roi_align_rotated": roi_align_flop_jit,
    "detzoo::deform_conv": deform_conv_flop_jit,
    "detzoo::nms": nms_flop_jit,
    "detzoo::nms_rotated": nms_flop_jit,
    "detzoo::box_iou_rotated": _box_iou_rotated_flop_jit,
}

# Ops whose outputs fvcore's activation count leaves out (like norms and pooling).
_ACTIVATION_IGNORED_OPS = (
    "aten::grid_sampler",
    "aten::group_norm",
    "detzoo::box_iou_rotated",
    "detzoo::nms",
    "detzoo::nms_rotated",
)

_ACTIVATION_HANDLES = {
    "detzoo::roi_align": _output_size_jit,
    "detzoo::roi_align_rotated": _output_size_jit,
    "detzoo::deform_conv": _output_size_jit,
}


def _adapter(model: nn.Module, inputs) -> TracingAdapter:
    # allow_non_tensor: one trace of these very inputs is all a count needs.
    return TracingAdapter(model, inputs, allow_non_tensor=True)


class FlopCountAnalysis(fvcore.nn.FlopCountAnalysis):
    """fvcore's `FlopCountAnalysis` for a model that takes `list[dict]` inputs (any structure
    `flatten_to_tuple` knows), with handles for detzoo's ops (see the module docstring).

        flops = FlopCountAnalysis(model, [{"image": image}])
        flops.total(), flops.by_operator(), flops.by_module()

    The model should be in eval mode: the count follows the inference path.
    """

    def __init__(self, model: nn.Module, inputs):
        adapter = _adapter(model, inputs)
        super().__init__(adapter, adapter.flattened_inputs)
        self.set_op_handle(**{op: None for op in _IGNORED_OPS})
        self.set_op_handle(**_FLOP_HANDLES)


class ActivationCountAnalysis(fvcore.nn.ActivationCountAnalysis):
    """fvcore's `ActivationCountAnalysis` for detzoo models, like `FlopCountAnalysis`."""

    def __init__(self, model: nn.Module, inputs):
        adapter = _adapter(model, inputs)
        super().__init__(adapter, adapter.flattened_inputs)
        self.set_op_handle(**{op: None for op in _IGNORED_OPS + _ACTIVATION_IGNORED_OPS})
        self.set_op_handle(**_ACTIVATION_HANDLES)


def _count_in_eval_mode(analysis_cls, model: nn.Module, inputs, scale: float) -> typing.DefaultDict[str, float]:
    training = model.training
    model.eval()
    try:
        counts = analysis_cls(model, inputs).by_operator()
    finally:
        model.train(training)
    return defaultdict(float, {op: count / scale for op, count in counts.items()})


def flop_count_operators(model: nn.Module, inputs: list) -> typing.DefaultDict[str, float]:
    """GFlops (10^9 multiply-adds) of each operator type for one run of `model` on `inputs`,
    in eval mode.

    Detection flops depend on the input: the box and mask heads run once per proposal or
    detection, so average over several inputs for a representative figure.

    Args:
        model: a detzoo model taking `list[dict]` (Detectron2's input format).
        inputs (list[dict]): one batch in that format.
    """
    return _count_in_eval_mode(FlopCountAnalysis, model, inputs, 1e9)


def activation_count_operators(model: nn.Module, inputs: list, **kwargs) -> typing.DefaultDict[str, float]:
    """Millions of activations (output elements of convolutions, matmuls and detzoo's pooling
    ops) of each operator type for one run of `model` on `inputs`, in eval mode."""
    if kwargs:
        raise TypeError(f"activation_count_operators: unexpected arguments {sorted(kwargs)}")
    return _count_in_eval_mode(ActivationCountAnalysis, model, inputs, 1e6)


def find_unused_parameters(model: nn.Module, inputs) -> List[str]:
    """Names of the trainable parameters that get no gradient from the training losses of
    `model(inputs)` (the model is run in training mode; `inputs` need ground truth)."""
    training = model.training
    model.train()
    try:
        outputs = model(inputs)
        if isinstance(outputs, dict):
            outputs = list(outputs.values())
        flattened = [x for x in _tensors(outputs) if x.requires_grad]
        if not flattened:
            raise ValueError("find_unused_parameters: the model outputs no tensor that requires grad")
        torch.autograd.backward(sum(x.sum() for x in flattened))
        unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
        model.zero_grad(set_to_none=True)
    finally:
        model.train(training)
    return unused


def _tensors(outputs) -> List[torch.Tensor]:
    values, _ = flatten_to_tuple(outputs)
    return [x for x in values if isinstance(x, torch.Tensor)]
