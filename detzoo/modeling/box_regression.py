"""Box parameterizations: how a detector's regression outputs ("deltas") turn a reference box
(anchor or proposal) into a predicted box, and the dense regression loss built on them.

* `Box2BoxTransform` (R-CNN, Girshick et al. 2014): deltas (dx, dy, dw, dh) shift the center by
  (dx * w, dy * h) and scale the size by (exp(dw), exp(dh)), each divided by a weight.
* `Box2BoxTransformRotated`: the same plus an angle delta da in radians (box angles are in
  degrees), as in the RRPN code.
* `Box2BoxTransformLinear` (FCOS): distances from the reference box's center to the four sides.
"""
import math
from typing import List, Sequence, Tuple, Union

import torch
from torch.nn import functional as F

from detzoo.layers import cat, ciou_loss, diou_loss, giou_loss, smooth_l1_loss
from detzoo.structures import Boxes

__all__ = ["Box2BoxTransform", "Box2BoxTransformLinear", "Box2BoxTransformRotated"]

# dw and dh are clamped so that a 16-pixel box (a small anchor) grows to at most 1000 pixels
# (a typical image size); larger values would overflow exp().
_DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)

_DENSE_LOSS_TYPES = ("smooth_l1", "giou", "diou", "ciou")


def _check_boxes(boxes: torch.Tensor, columns: int, name: str, caller: str) -> None:
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"{caller}: {name} must be a Tensor, got {type(boxes).__name__}")
    if boxes.dim() != 2 or boxes.shape[1] != columns:
        raise ValueError(f"{caller}: {name} must have shape (N, {columns}), got {tuple(boxes.shape)}")


def _check_deltas(deltas: torch.Tensor, boxes: torch.Tensor, box_dim: int, caller: str) -> None:
    """`deltas` must be (N, k * box_dim) for the N boxes (N, box_dim)."""
    _check_boxes(boxes, box_dim, "boxes", caller)
    if not isinstance(deltas, torch.Tensor):
        raise TypeError(f"{caller}: deltas must be a Tensor, got {type(deltas).__name__}")
    if deltas.dim() != 2 or deltas.shape[1] % box_dim != 0 or deltas.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"{caller}: deltas must have shape (N, k * {box_dim}) for boxes of shape "
            f"(N, {box_dim}), got deltas {tuple(deltas.shape)} and boxes {tuple(boxes.shape)}"
        )


def _check_pair(src_boxes: torch.Tensor, target_boxes: torch.Tensor, columns: int, caller: str) -> None:
    _check_boxes(src_boxes, columns, "src_boxes", caller)
    _check_boxes(target_boxes, columns, "target_boxes", caller)
    if src_boxes.shape[0] != target_boxes.shape[0]:
        raise ValueError(
            f"{caller}: src_boxes and target_boxes must hold the same number of boxes, got "
            f"{src_boxes.shape[0]} and {target_boxes.shape[0]}"
        )


def _check_weights(weights, count: int, name: str) -> Tuple[float, ...]:
    if len(weights) != count:
        raise ValueError(f"{name}: weights must have {count} values, got {len(weights)} ({weights!r})")
    return tuple(weights)


def _require_positive_sizes(widths: torch.Tensor, heights: torch.Tensor, caller: str) -> None:
    # A zero or negative source size gives inf/NaN deltas that would silently poison a loss.
    if not bool((widths > 0).all()) or not bool((heights > 0).all()):
        raise ValueError(f"{caller}: src_boxes must have positive width and height")


def _wrap_degrees(angles: torch.Tensor) -> torch.Tensor:
    """Angles in degrees brought into [-180, 180)."""
    return (angles + 180.0) % 360.0 - 180.0


class Box2BoxTransform:
    """R-CNN's box transform, deltas (dx, dy, dw, dh) between XYXY_ABS boxes:

        dx = wx * (x_target - x_src) / w_src      dw = ww * log(w_target / w_src)
        dy = wy * (y_target - y_src) / h_src      dh = wh * log(h_target / h_src)

    with (x, y) box centers. Weights were once chosen to give the deltas unit variance; they
    are now hyperparameters (e.g. (1, 1, 1, 1) for RPN, (10, 10, 5, 5) for Fast R-CNN).
    """

    def __init__(self, weights: Tuple[float, float, float, float], scale_clamp: float = _DEFAULT_SCALE_CLAMP):
        """
        Args:
            weights (4 floats): (wx, wy, ww, wh), multiply the deltas.
            scale_clamp (float): upper bound of dw and dh (after dividing by the weights)
                when applying deltas.
        """
        if not torch.jit.is_scripting():
            weights = _check_weights(weights, 4, "Box2BoxTransform")
        self.weights = weights
        self.scale_clamp = scale_clamp

    def get_deltas(self, src_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
        """The deltas that turn each source box into its target:
        `apply_deltas(get_deltas(src, target), src) == target` up to rounding (and clamping).

        Args:
            src_boxes (Tensor[N, 4]): XYXY_ABS, e.g. anchors or proposals; positive sizes.
            target_boxes (Tensor[N, 4]): XYXY_ABS, e.g. their matched ground truth.

        Returns:
            Tensor[N, 4]: (dx, dy, dw, dh), in the dtype of the inputs.
        """
        if not torch.jit.is_scripting():
            _check_pair(src_boxes, target_boxes, 4, "Box2BoxTransform.get_deltas")
        src_widths = src_boxes[:, 2] - src_boxes[:, 0]
        src_heights = src_boxes[:, 3] - src_boxes[:, 1]
        if not torch.jit.is_scripting():
            _require_positive_sizes(src_widths, src_heights, "Box2BoxTransform.get_deltas")
        src_ctr_x = src_boxes[:, 0] + 0.5 * src_widths
        src_ctr_y = src_boxes[:, 1] + 0.5 * src_heights

        target_widths = target_boxes[:, 2] - target_boxes[:, 0]
        target_heights = target_boxes[:, 3] - target_boxes[:, 1]
        target_ctr_x = target_boxes[:, 0] + 0.5 * target_widths
        target_ctr_y = target_boxes[:, 1] + 0.5 * target_heights

        wx, wy, ww, wh = self.weights
        dx = wx * (target_ctr_x - src_ctr_x) / src_widths
        dy = wy * (target_ctr_y - src_ctr_y) / src_heights
        dw = ww * torch.log(target_widths / src_widths)
        dh = wh * torch.log(target_heights / src_heights)
        return torch.stack((dx, dy, dw, dh), dim=1)

    def apply_deltas(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Apply k sets of deltas to each box (k > 1 for class-specific regression).

        Decoding runs in float32 whatever the dtype of `deltas` (half-precision exp() of a
        scale delta loses most of a box's size).

        Args:
            deltas (Tensor[N, k * 4]): (dx, dy, dw, dh) per box and set.
            boxes (Tensor[N, 4]): XYXY_ABS reference boxes.

        Returns:
            Tensor[N, k * 4]: float32 XYXY_ABS boxes, set j in columns 4j .. 4j + 3.
        """
        if not torch.jit.is_scripting():
            _check_deltas(deltas, boxes, 4, "Box2BoxTransform.apply_deltas")
        deltas = deltas.float()
        boxes = boxes.to(deltas.dtype)

        widths = (boxes[:, 2] - boxes[:, 0])[:, None]
        heights = (boxes[:, 3] - boxes[:, 1])[:, None]
        ctr_x = boxes[:, 0][:, None] + 0.5 * widths
        ctr_y = boxes[:, 1][:, None] + 0.5 * heights

        wx, wy, ww, wh = self.weights
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = torch.clamp(deltas[:, 2::4] / ww, max=self.scale_clamp)
        dh = torch.clamp(deltas[:, 3::4] / wh, max=self.scale_clamp)

        pred_ctr_x = dx * widths + ctr_x
        pred_ctr_y = dy * heights + ctr_y
        pred_w = torch.exp(dw) * widths
        pred_h = torch.exp(dh) * heights
        x0, x1 = pred_ctr_x - 0.5 * pred_w, pred_ctr_x + 0.5 * pred_w
        y0, y1 = pred_ctr_y - 0.5 * pred_h, pred_ctr_y + 0.5 * pred_h
        pred_boxes = torch.stack((x0, y0, x1, y1), dim=-1)
        return pred_boxes.reshape(deltas.shape)


class Box2BoxTransformRotated:
    """The rotated-box transform, deltas (dx, dy, dw, dh, da) between XYWHA_ABS boxes.

    dx, dy, dw, dh are as in `Box2BoxTransform`; da = wa * (a_target - a_src) in radians, with
    the angle difference first wrapped into [-180, 180) degrees. Applied boxes get angles in
    [-180, 180).
    """

    def __init__(
        self, weights: Tuple[float, float, float, float, float], scale_clamp: float = _DEFAULT_SCALE_CLAMP
    ):
        """
        Args:
            weights (5 floats): (wx, wy, ww, wh, wa), multiply the deltas.
            scale_clamp (float): upper bound of dw and dh (after dividing by the weights)
                when applying deltas.
        """
        self.weights = _check_weights(weights, 5, "Box2BoxTransformRotated")
        self.scale_clamp = scale_clamp

    def get_deltas(self, src_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
        """
        Args:
            src_boxes (Tensor[N, 5]): XYWHA_ABS, positive sizes.
            target_boxes (Tensor[N, 5]): XYWHA_ABS.

        Returns:
            Tensor[N, 5]: (dx, dy, dw, dh, da), da in radians (times wa).
        """
        _check_pair(src_boxes, target_boxes, 5, "Box2BoxTransformRotated.get_deltas")
        src_ctr_x, src_ctr_y, src_widths, src_heights, src_angles = src_boxes.unbind(dim=1)
        _require_positive_sizes(src_widths, src_heights, "Box2BoxTransformRotated.get_deltas")
        target_ctr_x, target_ctr_y, target_widths, target_heights, target_angles = target_boxes.unbind(dim=1)

        wx, wy, ww, wh, wa = self.weights
        dx = wx * (target_ctr_x - src_ctr_x) / src_widths
        dy = wy * (target_ctr_y - src_ctr_y) / src_heights
        dw = ww * torch.log(target_widths / src_widths)
        dh = wh * torch.log(target_heights / src_heights)
        # Radians keep the angle delta on the scale of the other deltas.
        da = _wrap_degrees(target_angles - src_angles) * (wa * math.pi / 180.0)
        return torch.stack((dx, dy, dw, dh, da), dim=1)

    def apply_deltas(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """
        Args:
            deltas (Tensor[N, k * 5]): (dx, dy, dw, dh, da) per box and set, da in radians.
            boxes (Tensor[N, 5]): XYWHA_ABS reference boxes.

        Returns:
            Tensor[N, k * 5]: XYWHA_ABS boxes (angles in [-180, 180)), the dtype of `deltas`.
        """
        _check_deltas(deltas, boxes, 5, "Box2BoxTransformRotated.apply_deltas")
        boxes = boxes.to(deltas.dtype)
        ctr_x, ctr_y, widths, heights, angles = (column[:, None] for column in boxes.unbind(dim=1))

        wx, wy, ww, wh, wa = self.weights
        dx = deltas[:, 0::5] / wx
        dy = deltas[:, 1::5] / wy
        dw = torch.clamp(deltas[:, 2::5] / ww, max=self.scale_clamp)
        dh = torch.clamp(deltas[:, 3::5] / wh, max=self.scale_clamp)
        da = deltas[:, 4::5] / wa

        pred_angles = _wrap_degrees(da * 180.0 / math.pi + angles)
        pred_boxes = torch.stack(
            (dx * widths + ctr_x, dy * heights + ctr_y, torch.exp(dw) * widths, torch.exp(dh) * heights, pred_angles),
            dim=-1,
        )
        return pred_boxes.reshape(deltas.shape)


class Box2BoxTransformLinear:
    """FCOS's transform: deltas (l, t, r, b) are the distances from the source box's center
    to the left, top, right and bottom sides of the target box, optionally divided by the
    source box's width (l, r) and height (t, b). The source center must lie in the target."""

    def __init__(self, normalize_by_size: bool = True):
        """
        Args:
            normalize_by_size (bool): divide the distances by the source box's size (e.g. an
                anchor of the level's stride), so that deltas are scale-free.
        """
        self.normalize_by_size = normalize_by_size

    def _source_sizes(self, boxes: torch.Tensor) -> torch.Tensor:
        """Tensor[N, 4]: (w, h, w, h) of XYXY boxes."""
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        return torch.stack((widths, heights, widths, heights), dim=1)

    def get_deltas(self, src_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
        """
        Args:
            src_boxes (Tensor[N, 4]): XYXY_ABS, e.g. (square) anchors.
            target_boxes (Tensor[N, 4]): XYXY_ABS.

        Returns:
            Tensor[N, 4]: (l, t, r, b) distances, normalized if `normalize_by_size`.
        """
        _check_pair(src_boxes, target_boxes, 4, "Box2BoxTransformLinear.get_deltas")
        src_ctr_x = 0.5 * (src_boxes[:, 0] + src_boxes[:, 2])
        src_ctr_y = 0.5 * (src_boxes[:, 1] + src_boxes[:, 3])
        deltas = torch.stack(
            (
                src_ctr_x - target_boxes[:, 0],
                src_ctr_y - target_boxes[:, 1],
                target_boxes[:, 2] - src_ctr_x,
                target_boxes[:, 3] - src_ctr_y,
            ),
            dim=1,
        )
        if self.normalize_by_size:
            deltas = deltas / self._source_sizes(src_boxes)
        return deltas

    def apply_deltas(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """
        Args:
            deltas (Tensor[N, k * 4]): (l, t, r, b) per box and set; negative values are
                clamped to 0 so the result is always a valid box (FCOS, Sec. 2.1 of
                arXiv:2006.09214).
            boxes (Tensor[N, 4]): XYXY_ABS reference boxes.

        Returns:
            Tensor[N, k * 4]: XYXY_ABS boxes, the dtype of `deltas`.
        """
        _check_deltas(deltas, boxes, 4, "Box2BoxTransformLinear.apply_deltas")
        deltas = F.relu(deltas)
        boxes = boxes.to(deltas.dtype)
        ctr_x = (0.5 * (boxes[:, 0] + boxes[:, 2]))[:, None]
        ctr_y = (0.5 * (boxes[:, 1] + boxes[:, 3]))[:, None]
        if self.normalize_by_size:
            # One (w, h, w, h) per box, repeated over the k sets.
            deltas = deltas * self._source_sizes(boxes).repeat(1, deltas.shape[1] // 4)
        pred_boxes = torch.stack(
            (ctr_x - deltas[:, 0::4], ctr_y - deltas[:, 1::4], ctr_x + deltas[:, 2::4], ctr_y + deltas[:, 3::4]),
            dim=-1,
        )
        return pred_boxes.reshape(deltas.shape)


def _concat_anchors(anchors: Sequence[Union[Boxes, torch.Tensor]]) -> torch.Tensor:
    """Tensor[R, B]: the anchors of all levels, level after level."""
    if isinstance(anchors[0], Boxes):
        return type(anchors[0]).cat(list(anchors)).tensor
    return cat(list(anchors))


def _dense_box_regression_loss(
    anchors: List[Union[Boxes, torch.Tensor]],
    box2box_transform: Union[Box2BoxTransform, Box2BoxTransformLinear],
    pred_anchor_deltas: List[torch.Tensor],
    gt_boxes: List[torch.Tensor],
    fg_mask: torch.Tensor,
    box_reg_loss_type: str = "smooth_l1",
    smooth_l1_beta: float = 0.0,
) -> torch.Tensor:
    """Box regression loss of a dense detector (RPN, RetinaNet, FCOS), summed over the
    foreground anchors of all images.

    Args:
        anchors (list[Boxes or Tensor[R_l, 4]]): per level, its anchors (XYXY_ABS).
        box2box_transform: how deltas map anchors to boxes.
        pred_anchor_deltas (list[Tensor[N, R_l, 4]]): per level, the predicted deltas.
        gt_boxes (list[Tensor[R, 4]]): per image, the XYXY_ABS box matched to each anchor
            (R = sum of R_l).
        fg_mask (BoolTensor[N, R] or Ellipsis): the anchors that contribute to the loss;
            `...` means all of them (Fast R-CNN passes only foreground rows).
        box_reg_loss_type (str): "smooth_l1" (on deltas), or "giou", "diou", "ciou" (on the
            decoded boxes).
        smooth_l1_beta (float): smooth L1's beta; 0 is the L1 loss.

    Returns:
        Tensor: the summed (not averaged) loss, a scalar.
    """
    if box_reg_loss_type not in _DENSE_LOSS_TYPES:
        raise ValueError(
            f"_dense_box_regression_loss: box_reg_loss_type must be one of {_DENSE_LOSS_TYPES}, "
            f"got {box_reg_loss_type!r}"
        )
    all_anchors = _concat_anchors(anchors)
    pred_deltas = cat(list(pred_anchor_deltas), dim=1)
    if fg_mask is Ellipsis:
        fg_mask = torch.ones(pred_deltas.shape[:2], dtype=torch.bool, device=pred_deltas.device)
    if fg_mask.shape != pred_deltas.shape[:2] or len(gt_boxes) != pred_deltas.shape[0]:
        raise ValueError(
            f"_dense_box_regression_loss: fg_mask {tuple(fg_mask.shape)}, predicted deltas "
            f"{tuple(pred_deltas.shape)} and {len(gt_boxes)} gt_boxes tensors do not agree on "
            f"(images, anchors)"
        )
    # Every term is per anchor, so the loss only needs the foreground rows, taken in
    # (image, anchor) order as a boolean mask over (N, R) would take them.
    image_index, anchor_index = fg_mask.nonzero(as_tuple=True)
    fg_anchors = all_anchors[anchor_index]
    fg_pred_deltas = pred_deltas[image_index, anchor_index]
    fg_gt_boxes = torch.stack(list(gt_boxes))[image_index, anchor_index]

    if box_reg_loss_type == "smooth_l1":
        fg_gt_deltas = box2box_transform.get_deltas(fg_anchors, fg_gt_boxes)
        return smooth_l1_loss(fg_pred_deltas, fg_gt_deltas, beta=smooth_l1_beta, reduction="sum")
    fg_pred_boxes = box2box_transform.apply_deltas(fg_pred_deltas, fg_anchors)
    iou_loss = {"giou": giou_loss, "diou": diou_loss, "ciou": ciou_loss}[box_reg_loss_type]
    return iou_loss(fg_pred_boxes, fg_gt_boxes, reduction="sum")
