"""Box regression losses.

`smooth_l1_loss` and `giou_loss` are fvcore's (the ones Detectron2 uses); `diou_loss` and
`ciou_loss` follow Zheng et al., "Distance-IoU Loss" (AAAI 2020, arXiv:1911.08287).
"""
import math
import warnings

import torch

with warnings.catch_warnings():
    # fvcore.nn scripts its focal losses at import; recent torch deprecates torch.jit.script.
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
    from fvcore.nn import giou_loss, smooth_l1_loss

__all__ = ["ciou_loss", "diou_loss", "giou_loss", "smooth_l1_loss"]

_REDUCTIONS = ("none", "mean", "sum")


def _check_boxes(boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str, name: str):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    for arg, boxes in (("boxes1", boxes1), ("boxes2", boxes2)):
        if boxes.shape[-1:] != (4,):
            raise ValueError(f"{name}: {arg} must have shape (N, 4) or (4,), got {tuple(boxes.shape)}")
    if boxes1.shape != boxes2.shape:
        raise ValueError(
            f"{name}: boxes1 and boxes2 must have the same shape, got {tuple(boxes1.shape)} "
            f"and {tuple(boxes2.shape)}"
        )
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    if not ((x2 >= x1).all() and (y2 >= y1).all()):
        raise ValueError(f"{name}: boxes1 must be XYXY with x2 >= x1 and y2 >= y1")


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        # The mean of nothing is 0 (kept in the graph), not NaN.
        return loss.mean() if loss.numel() > 0 else loss.sum() * 0.0
    if reduction == "sum":
        return loss.sum()
    return loss


def _iou_and_center_penalty(boxes1, boxes2, eps):
    """IoU and the DIoU penalty: squared center distance over the squared diagonal of the
    smallest box enclosing both. Both (...,), for XYXY boxes (..., 4)."""
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)

    inter_w = (torch.min(x2, x2g) - torch.max(x1, x1g)).clamp(min=0)
    inter_h = (torch.min(y2, y2g) - torch.max(y1, y1g)).clamp(min=0)
    intersection = inter_w * inter_h
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intersection
    iou = intersection / (union + eps)

    enclosing_w = torch.max(x2, x2g) - torch.min(x1, x1g)
    enclosing_h = torch.max(y2, y2g) - torch.min(y1, y1g)
    diagonal_sq = enclosing_w.square() + enclosing_h.square() + eps
    center_dist_sq = ((x1 + x2 - x1g - x2g) / 2).square() + ((y1 + y2 - y1g - y2g) / 2).square()
    return iou, center_dist_sq / diagonal_sq


def diou_loss(
    boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none", eps: float = 1e-7
) -> torch.Tensor:
    """Distance-IoU loss, 1 - IoU + d^2 / c^2 (d: distance of the centers, c: diagonal of the
    smallest enclosing box), Eq. 7 of the paper.

    Args:
        boxes1, boxes2 (Tensor[N, 4] or Tensor[4]): XYXY; boxes1 (predictions) must have
            x2 >= x1 and y2 >= y1.
        reduction (str): "none" (per-box loss, shape (N,)), "mean" (0 for no boxes) or "sum".
        eps (float): added to the union and to c^2 against division by zero.
    """
    _check_boxes(boxes1, boxes2, reduction, "diou_loss")
    iou, center_penalty = _iou_and_center_penalty(boxes1, boxes2, eps)
    return _reduce(1 - iou + center_penalty, reduction)


def ciou_loss(
    boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none", eps: float = 1e-7
) -> torch.Tensor:
    """Complete-IoU loss, the DIoU loss plus alpha * v, where v measures the difference of the
    aspect ratios (4 / pi^2 * (atan(w_gt / h_gt) - atan(w / h))^2) and alpha = v / (1 - IoU + v)
    is held constant in backward (Eq. 10 of the paper).

    Args:
        boxes1, boxes2 (Tensor[N, 4] or Tensor[4]): XYXY; boxes1 (predictions) must have
            x2 >= x1 and y2 >= y1.
        reduction (str): "none" (per-box loss, shape (N,)), "mean" (0 for no boxes) or "sum".
        eps (float): added to the union, to c^2 and to alpha's denominator.
    """
    _check_boxes(boxes1, boxes2, reduction, "ciou_loss")
    iou, center_penalty = _iou_and_center_penalty(boxes1, boxes2, eps)
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    angle_gap = torch.atan((x2g - x1g) / (y2g - y1g)) - torch.atan((x2 - x1) / (y2 - y1))
    v = (4 / math.pi**2) * angle_gap.square()
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return _reduce(1 - iou + center_penalty + alpha * v, reduction)
