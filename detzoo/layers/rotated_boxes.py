"""IoU of rotated boxes (XYWHA_ABS: x_ctr, y_ctr, width, height, angle in degrees,
counter-clockwise in image space)."""
import torch

from detzoo import _ext
from detzoo.layers.nms import _check_boxes

__all__ = ["pairwise_iou_rotated"]


def pairwise_iou_rotated(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Intersection over union of every pair of rotated boxes.

    Args:
        boxes1 (Tensor[N, 5]): XYWHA_ABS, floating.
        boxes2 (Tensor[M, 5]): XYWHA_ABS, same dtype and device as boxes1.

    Returns:
        Tensor[N, M]: IoU of boxes1[i] and boxes2[j], in the boxes' dtype (half / bfloat16 are
        computed in float). A box of area below 1e-14 has IoU 0 with every box.
    """
    _check_boxes("pairwise_iou_rotated", "boxes1", boxes1, 5)
    _check_boxes("pairwise_iou_rotated", "boxes2", boxes2, 5)
    if boxes1.dtype != boxes2.dtype:
        raise TypeError(f"pairwise_iou_rotated: boxes2 must have boxes1's dtype {boxes1.dtype}, got {boxes2.dtype}")
    if boxes1.device != boxes2.device:
        raise ValueError(f"pairwise_iou_rotated: boxes2 is on {boxes2.device} but boxes1 is on {boxes1.device}")
    return _ext.load().box_iou_rotated(boxes1, boxes2)


@_ext.on_load
def _register_fake_kernels():
    @torch.library.register_fake("detzoo::box_iou_rotated")
    def _box_iou_rotated_fake(boxes1, boxes2):
        torch._check(boxes1.dim() == 2 and boxes1.shape[1] == 5, lambda: f"boxes1 must be (N, 5), got {tuple(boxes1.shape)}")
        torch._check(boxes2.dim() == 2 and boxes2.shape[1] == 5, lambda: f"boxes2 must be (M, 5), got {tuple(boxes2.shape)}")
        torch._check(boxes1.dtype == boxes2.dtype, lambda: f"dtypes differ: {boxes1.dtype} and {boxes2.dtype}")
        return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]))
