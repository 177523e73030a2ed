"""ONNX symbolic functions for detzoo's compiled ops, for the TorchScript-based exporter
(`torch.onnx.export(..., dynamo=False)`).

    detzoo::roi_align   -> RoiAlign (opset >= 16, which added coordinate_transformation_mode:
                           "half_pixel" for aligned=True, "output_half_pixel" for the legacy rule)
    detzoo::nms         -> NonMaxSuppression (opset >= 11; boxes XYXY_ABS, ties kept in order)
    detzoo::deform_conv -> DeformConv (opset >= 19)

`detzoo::roi_align_rotated`, `detzoo::nms_rotated` and `detzoo::box_iou_rotated` have no ONNX
counterpart; exporting a model that calls them raises an error naming the op.
"""
import sys

import torch
from torch.onnx import symbolic_helper

from detzoo import _ext

__all__ = ["MIN_OPSET", "register_onnx_symbolics"]

# RoiAlign's coordinate_transformation_mode, needed for Detectron2's aligned=True, came in 16.
MIN_OPSET = 16
_DEFORM_CONV_OPSET = 19
_INT64 = torch.onnx.TensorProtoDataType.INT64


def _constant(g, value, dtype):
    return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))


def _column(g, matrix, index: int):
    """matrix[:, index] (a 1-D tensor)."""
    return g.op("Gather", matrix, _constant(g, index, torch.int64), axis_i=1)


@symbolic_helper.parse_args("v", "v", "f", "i", "i", "i", "b")
def _roi_align_symbolic(g, input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    # rois (R, 5) rows [image index, x1, y1, x2, y2] -> RoiAlign's rois (R, 4) and batch_indices (R,)
    batch_indices = g.op("Cast", _column(g, rois, 0), to_i=_INT64)
    boxes = symbolic_helper._slice_helper(g, rois, axes=[1], starts=[1], ends=[5])
    return g.op(
        "RoiAlign",
        input,
        boxes,
        batch_indices,
        spatial_scale_f=spatial_scale,
        output_height_i=pooled_height,
        output_width_i=pooled_width,
        # detzoo samples adaptively for any value <= 0; ONNX only accepts 0 for that.
        sampling_ratio_i=max(sampling_ratio, 0),
        mode_s="avg",
        coordinate_transformation_mode_s="half_pixel" if aligned else "output_half_pixel",
    )


@symbolic_helper.parse_args("v", "v", "f")
def _nms_symbolic(g, dets, scores, iou_threshold):
    # NonMaxSuppression takes a batch of boxes (1, N, 4) and per-class scores (1, 1, N), and
    # returns rows [batch, class, box index] in the order of selection (decreasing score).
    boxes = symbolic_helper._unsqueeze_helper(g, dets, [0])
    scores = symbolic_helper._unsqueeze_helper(g, scores, [0, 1])
    max_output_per_class = _constant(g, [sys.maxsize], torch.int64)
    threshold = _constant(g, [iou_threshold], torch.float32)
    selected = g.op("NonMaxSuppression", boxes, scores, max_output_per_class, threshold)
    return _column(g, selected, 2)


@symbolic_helper.parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")
def _deform_conv_symbolic(
    g, input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
    groups, offset_groups, use_mask,
):
    inputs = [input, weight, offset, bias] + ([mask] if use_mask else [])
    return g.op(
        "DeformConv",
        *inputs,
        strides_i=[stride_h, stride_w],
        pads_i=[pad_h, pad_w, pad_h, pad_w],
        dilations_i=[dilation_h, dilation_w],
        group_i=groups,
        offset_group_i=offset_groups,
    )


def _no_onnx_counterpart(op: str):
    def symbolic(g, *args):
        raise RuntimeError(
            f"detzoo::{op} has no ONNX counterpart; export this model to TorchScript instead "
            "(tools/export_model.py --format torchscript)"
        )

    return symbolic


_registered = False


def register_onnx_symbolics() -> None:
    """Register the symbolic functions (once; later calls do nothing). Loads detzoo._C so the
    ops exist."""
    global _registered
    if _registered:
        return
    _ext.load()
    register = torch.onnx.register_custom_op_symbolic
    register("detzoo::roi_align", _roi_align_symbolic, MIN_OPSET)
    register("detzoo::nms", _nms_symbolic, MIN_OPSET)
    register("detzoo::deform_conv", _deform_conv_symbolic, _DEFORM_CONV_OPSET)
    for op in ("roi_align_rotated", "nms_rotated", "box_iou_rotated"):
        register(f"detzoo::{op}", _no_onnx_counterpart(op), MIN_OPSET)
    _registered = True
