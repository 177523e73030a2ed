"""Rotated boxes (XYWHA_ABS): the `RotatedBoxes` container and their pairwise IoU.

A rotated box (xc, yc, w, h, a) is the axis-aligned box of width w (along x) and height h
(along y) centered at (xc, yc), turned by `a` degrees counter-clockwise as seen on screen
(image y points down). With theta = a * pi / 180, a box corner at offset (dx, dy) from the
center moves to (cos(theta) dx + sin(theta) dy, -sin(theta) dx + cos(theta) dy).
So (5, 3, 4, 2, 90) is the upright box x in [4, 6], y in [1, 5]. Angles a and a + 360 k are the
same box; a and a + 180 cover the same region (IoU 1) but are different boxes for ROI pooling,
where the box's own left/top matters.
"""
import math
from typing import Iterator, Tuple

import torch

from detzoo.layers.rotated_boxes import pairwise_iou_rotated

from .boxes import Boxes


class RotatedBoxes(Boxes):
    """N rotated boxes stored as a float32 tensor (N, 5), XYWHA_ABS.

    Attributes:
        tensor (Tensor[N, 5]): float32, each row (x_center, y_center, width, height, angle in
            degrees counter-clockwise; any value is allowed, [-180, 180) is the usual range).
    """

    def __init__(self, tensor: torch.Tensor):
        """
        Args:
            tensor (Tensor[N, 5] or array-like): XYWHA_ABS boxes; converted to float32. Any
                empty input gives zero boxes, shape (0, 5).
        """
        if isinstance(tensor, torch.Tensor):
            tensor = tensor.to(torch.float32)
        else:
            tensor = torch.as_tensor(tensor, dtype=torch.float32, device=torch.device("cpu"))
        if tensor.numel() == 0:
            tensor = tensor.reshape((-1, 5))
        if tensor.dim() != 2 or tensor.shape[-1] != 5:
            raise ValueError(
                f"RotatedBoxes expects a tensor of shape (N, 5), got {tuple(tensor.shape)}"
            )
        self.tensor = tensor

    def area(self) -> torch.Tensor:
        """Tensor[N]: width * height of each box."""
        return self.tensor[:, 2] * self.tensor[:, 3]

    def normalize_angles(self) -> None:
        """Bring angles into [-180, 180) degrees, in place."""
        self.tensor[:, 4] = (self.tensor[:, 4] + 180.0) % 360.0 - 180.0

    def clip(self, box_size: Tuple[int, int], clip_angle_threshold: float = 1.0) -> None:
        """Clip nearly horizontal boxes to the image, in place; leave the others alone.

        A box is clipped like an axis-aligned box when |angle| <= `clip_angle_threshold`
        degrees after `normalize_angles()` (which this calls). Tilted boxes have no single
        right way to be clipped, and ops such as ROIAlignRotated handle boxes that stick out.
        Width and height never grow through clipping.

        Args:
            box_size (height, width): the image size.
            clip_angle_threshold (float): in degrees.
        """
        h, w = box_size
        self.normalize_angles()
        box = self.tensor
        near_horizontal = (box[:, 4].abs() <= clip_angle_threshold)[:, None]
        half_size = box[:, 2:4] / 2.0
        x0 = (box[:, 0] - half_size[:, 0]).clamp(min=0, max=w)
        y0 = (box[:, 1] - half_size[:, 1]).clamp(min=0, max=h)
        x1 = (box[:, 0] + half_size[:, 0]).clamp(min=0, max=w)
        y1 = (box[:, 1] + half_size[:, 1]).clamp(min=0, max=h)
        clipped = torch.stack(
            [
                (x0 + x1) / 2.0,
                (y0 + y1) / 2.0,
                torch.min(box[:, 2], x1 - x0),
                torch.min(box[:, 3], y1 - y0),
            ],
            dim=1,
        )
        box[:, :4] = torch.where(near_horizontal, clipped, box[:, :4])

    def nonempty(self, threshold: float = 0.0) -> torch.Tensor:
        """BoolTensor[N]: True where width and height are both larger than `threshold`."""
        return (self.tensor[:, 2] > threshold) & (self.tensor[:, 3] > threshold)

    def inside_box(self, box_size: Tuple[int, int], boundary_threshold: int = 0) -> torch.Tensor:
        """BoolTensor[N]: boxes whose enclosing horizontal rectangle lies inside
        [0, width) x [0, height), each side allowed to stick out by `boundary_threshold`.

        Rotated proposals often extend past the image (clip() leaves tilted boxes alone), so
        RRPN may not need this filter at all.

        Args:
            box_size (height, width): the reference size.
        """
        height, width = box_size
        box = self.tensor
        angle = box[..., 4] * math.pi / 180.0
        cos, sin = angle.cos().abs(), angle.sin().abs()
        half_w, half_h = box[..., 2] / 2.0, box[..., 3] / 2.0
        reach_x = cos * half_w + sin * half_h
        reach_y = sin * half_w + cos * half_h
        return (
            (box[..., 0] - reach_x >= -boundary_threshold)
            & (box[..., 1] - reach_y >= -boundary_threshold)
            & (box[..., 0] + reach_x < width + boundary_threshold)
            & (box[..., 1] + reach_y < height + boundary_threshold)
        )

    def get_centers(self) -> torch.Tensor:
        """Tensor[N, 2]: (x, y) centers."""
        return self.tensor[:, :2]

    def scale(self, scale_x: float, scale_y: float) -> None:
        """Scale the image plane by (scale_x, scale_y), in place.

        With unequal factors a tilted rectangle becomes a parallelogram; the result is the
        rectangle spanned by the images of the box's two half-axes: the width axis
        w/2 (cos, -sin) maps to w/2 (sx cos, -sy sin), the height axis h/2 (sin, cos) to
        h/2 (sx sin, sy cos), and the new angle is that of the scaled height axis.
        """
        box = self.tensor
        box[:, 0] *= scale_x
        box[:, 1] *= scale_y
        theta = box[:, 4] * math.pi / 180.0
        cos, sin = torch.cos(theta), torch.sin(theta)
        box[:, 2] *= torch.sqrt((scale_x * cos) ** 2 + (scale_y * sin) ** 2)
        box[:, 3] *= torch.sqrt((scale_x * sin) ** 2 + (scale_y * cos) ** 2)
        box[:, 4] = torch.atan2(scale_x * sin, scale_y * cos) * 180.0 / math.pi

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Yield one box at a time as a Tensor of shape (5,)."""
        yield from self.tensor


def pairwise_iou(boxes1: RotatedBoxes, boxes2: RotatedBoxes) -> torch.Tensor:
    """Intersection over union of all pairs of rotated boxes.

    Args:
        boxes1, boxes2 (RotatedBoxes): N and M boxes, XYWHA_ABS.

    Returns:
        Tensor[N, M]
    """
    return pairwise_iou_rotated(boxes1.tensor, boxes2.tensor)
