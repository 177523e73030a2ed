"""Non-maximum suppression of axis-aligned and rotated boxes, per class or not.

Every function returns the int64 indices of the kept boxes, sorted by decreasing score (boxes
with equal scores keep their input order). A box is suppressed by a kept, higher-scoring box
when their IoU is strictly greater than `iou_threshold`, as in torchvision. Axis-aligned boxes
are XYXY_ABS and their area is (x2 - x1) * (y2 - y1) (no "+1"); rotated boxes are XYWHA_ABS:
(x_ctr, y_ctr, width, height, angle in degrees, counter-clockwise).
"""
import numbers

import torch

from detzoo import _ext

__all__ = ["batched_nms", "batched_nms_rotated", "nms", "nms_rotated"]


def _check_floating(fn: str, name: str, tensor) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"{fn}: {name} must have a floating dtype, got {tensor.dtype}")


def _check_boxes(fn: str, name: str, boxes, box_dim: int) -> None:
    _check_floating(fn, name, boxes)
    if boxes.dim() != 2 or boxes.shape[1] != box_dim:
        raise ValueError(f"{fn}: {name} must have shape (N, {box_dim}), got {tuple(boxes.shape)}")


def _check_per_box(fn: str, name: str, tensor, boxes: torch.Tensor) -> None:
    """`tensor` must be 1-D with one entry per box, on the boxes' device."""
    if tensor.dim() != 1 or tensor.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"{fn}: {name} must have shape ({boxes.shape[0]},), one entry per box, got {tuple(tensor.shape)}"
        )
    if tensor.device != boxes.device:
        raise ValueError(f"{fn}: {name} is on {tensor.device} but boxes are on {boxes.device}")


def _check_threshold(fn: str, iou_threshold) -> float:
    if isinstance(iou_threshold, torch.Tensor) and iou_threshold.numel() == 1:
        iou_threshold = iou_threshold.item()
    if not isinstance(iou_threshold, numbers.Real) or isinstance(iou_threshold, bool):
        raise TypeError(f"{fn}: iou_threshold must be a real number, got {type(iou_threshold).__name__}")
    return float(iou_threshold)


def _check_nms_inputs(fn: str, boxes, scores, iou_threshold, box_dim: int) -> float:
    _check_boxes(fn, "boxes", boxes, box_dim)
    _check_floating(fn, "scores", scores)
    _check_per_box(fn, "scores", scores, boxes)
    return _check_threshold(fn, iou_threshold)


def _check_idxs(fn: str, idxs, boxes: torch.Tensor) -> None:
    if not isinstance(idxs, torch.Tensor):
        raise TypeError(f"{fn}: idxs must be a torch.Tensor, got {type(idxs).__name__}")
    if idxs.dtype == torch.bool or idxs.is_complex():
        raise TypeError(f"{fn}: idxs must hold category indices (an integer dtype), got {idxs.dtype}")
    _check_per_box(fn, "idxs", idxs, boxes)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression of axis-aligned boxes.

    Args:
        boxes (Tensor[N, 4]): XYXY_ABS, any floating dtype (half / bfloat16 are compared in float).
        scores (Tensor[N]): floating, on the same device.
        iou_threshold (float): boxes whose IoU with a kept, higher-scoring box is above it are
            discarded.

    Returns:
        Tensor[K] int64: indices into `boxes` of the kept boxes, by decreasing score.
    """
    if not torch.jit.is_scripting():
        iou_threshold = _check_nms_inputs("nms", boxes, scores, iou_threshold, 4)
        _ext.load()
    return torch.ops.detzoo.nms(boxes, scores, iou_threshold)


def nms_rotated(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression of rotated boxes, by their rotated IoU.

    The angle only enters through the overlap: (x, y, w, h, 90) and (x, y, h, w, 0) cover the
    same region, so their IoU is 1 and only one of them survives, whatever the orientation of
    the object (e.g. text) they stand for.

    Args:
        boxes (Tensor[N, 5]): XYWHA_ABS (x_ctr, y_ctr, width, height, angle in degrees).
        scores (Tensor[N]): floating, on the same device.
        iou_threshold (float): boxes whose IoU with a kept, higher-scoring box is above it are
            discarded.

    Returns:
        Tensor[K] int64: indices into `boxes` of the kept boxes, by decreasing score.
    """
    if not torch.jit.is_scripting():
        iou_threshold = _check_nms_inputs("nms_rotated", boxes, scores, iou_threshold, 5)
        _ext.load()
    return torch.ops.detzoo.nms_rotated(boxes, scores, iou_threshold)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Non-maximum suppression within each category: boxes of different `idxs` never suppress
    each other.

    One NMS runs over all boxes after moving each category to its own stretch of the x axis,
    far enough that boxes of two categories cannot overlap. The shift is done in float32
    (half has too little range for it).

    Args:
        boxes (Tensor[N, 4]): XYXY_ABS.
        scores (Tensor[N]): floating.
        idxs (Tensor[N]): integer category of each box.
        iou_threshold (float): as in `nms`.

    Returns:
        Tensor[K] int64: indices into `boxes` of the kept boxes, by decreasing score.
    """
    if not torch.jit.is_scripting():
        iou_threshold = _check_nms_inputs("batched_nms", boxes, scores, iou_threshold, 4)
        _check_idxs("batched_nms", idxs, boxes)
    if boxes.shape[0] == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    boxes = boxes.float()
    x_min, x_max = boxes[:, 0::2].aminmax()
    # Category c is moved by c * span: its boxes then lie in [x_min + c * span, x_max + c * span],
    # clear of category c + 1 (unlike torchvision's shift by x_max + 1, also with negative x).
    span = x_max - x_min + 1
    shifted = boxes.clone()
    shifted[:, 0::2] += (idxs.to(boxes.dtype) * span)[:, None]
    return nms(shifted, scores, iou_threshold)


def batched_nms_rotated(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Rotated non-maximum suppression within each category: boxes of different `idxs` never
    suppress each other.

    Like `batched_nms`, each category is moved along x, far enough that no two categories'
    boxes can touch whatever their angle: a box reaches at most half its diagonal from its
    centre. The shift works from the smallest reach as well as the largest, so negative
    coordinates are handled, and is done in float32.

    Args:
        boxes (Tensor[N, 5]): XYWHA_ABS.
        scores (Tensor[N]): floating.
        idxs (Tensor[N]): integer category of each box.
        iou_threshold (float): as in `nms_rotated`.

    Returns:
        Tensor[K] int64: indices into `boxes` of the kept boxes, by decreasing score.
    """
    if not torch.jit.is_scripting():
        iou_threshold = _check_nms_inputs("batched_nms_rotated", boxes, scores, iou_threshold, 5)
        _check_idxs("batched_nms_rotated", idxs, boxes)
    if boxes.shape[0] == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    boxes = boxes.float()
    half_diagonal = torch.hypot(boxes[:, 2], boxes[:, 3]) / 2
    reach_max = (boxes[:, 0] + half_diagonal).max()
    reach_min = (boxes[:, 0] - half_diagonal).min()
    span = reach_max - reach_min + 1
    shifted = boxes.clone()
    shifted[:, 0] += idxs.to(boxes.dtype) * span
    return nms_rotated(shifted, scores, iou_threshold)


def _check_fake_nms(dets, scores, box_dim: int) -> None:
    torch._check(dets.dim() == 2, lambda: f"dets must be 2-D, got {dets.dim()}-D")
    torch._check(dets.shape[1] == box_dim, lambda: f"dets must be (N, {box_dim}), got {tuple(dets.shape)}")
    torch._check(scores.dim() == 1, lambda: f"scores must be 1-D, got {scores.dim()}-D")
    torch._check(
        dets.shape[0] == scores.shape[0],
        lambda: f"dets and scores must have one length, got {dets.shape[0]} and {scores.shape[0]}",
    )


@_ext.on_load
def _register_fake_kernels():
    # How many boxes survive depends on the values: the output length is a fresh unbacked size.
    @torch.library.register_fake("detzoo::nms")
    def _nms_fake(dets, scores, iou_threshold):
        _check_fake_nms(dets, scores, 4)
        num_kept = torch.library.get_ctx().new_dynamic_size()
        return dets.new_empty((num_kept,), dtype=torch.int64)

    @torch.library.register_fake("detzoo::nms_rotated")
    def _nms_rotated_fake(dets, scores, iou_threshold):
        _check_fake_nms(dets, scores, 5)
        num_kept = torch.library.get_ctx().new_dynamic_size()
        return dets.new_empty((num_kept,), dtype=torch.int64)
