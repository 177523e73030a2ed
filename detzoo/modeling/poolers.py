"""ROIPooler: a fixed-size feature for every box, pooled from the pyramid level that suits
the box's size (FPN, Lin et al. 2017, Eq. 1).

Levels are numbered by stride: level k has stride 2^k (P2 = stride 4 is level 2). A box of
size sqrt(area) = canonical_box_size goes to `canonical_level`; a box twice as large to the
next level, and so on, clamped to the levels present.
"""
import math
from typing import List, Sequence, Tuple, Union

import torch
from torch import nn
from torchvision.ops import RoIPool

from detzoo.layers import ROIAlign, ROIAlignRotated, nonzero_tuple, shapes_to_tensor
from detzoo.structures import Boxes

__all__ = ["ROIPooler", "assign_boxes_to_levels", "convert_boxes_to_pooler_format"]

_POOLER_TYPES = ("ROIAlign", "ROIAlignV2", "ROIPool", "ROIAlignRotated")


def assign_boxes_to_levels(
    box_lists: List[Boxes],
    min_level: int,
    max_level: int,
    canonical_box_size: int,
    canonical_level: int,
) -> torch.Tensor:
    """The pyramid level of every box, as an offset from `min_level`.

    level = floor(canonical_level + log2(sqrt(area) / canonical_box_size + eps)), clamped to
    [min_level, max_level]. The machine epsilon keeps a zero-area box at a finite level and
    moves a box exactly at a level boundary to the upper level despite rounding.

    Args:
        box_lists (list[Boxes] or list[RotatedBoxes]): per image, its boxes.
        min_level, max_level (int): the levels present (level k has stride 2^k).
        canonical_box_size (int): sqrt(area), in input pixels, of a box that belongs on
            `canonical_level`.
        canonical_level (int): see above.

    Returns:
        LongTensor[M]: for the M boxes of all images (image after image), the level index
        minus `min_level`, i.e. an index into the list of pooled feature maps.
    """
    eps = 2.220446049250313e-16  # sys.float_info.epsilon, written out for TorchScript
    box_sizes = torch.sqrt(torch.cat([boxes.area() for boxes in box_lists]))
    levels = torch.floor(canonical_level + torch.log2(box_sizes / canonical_box_size + eps))
    levels = torch.clamp(levels, min=min_level, max=max_level)
    return levels.to(torch.int64) - min_level


def convert_boxes_to_pooler_format(box_lists: List[Boxes]) -> torch.Tensor:
    """The boxes of all images as one tensor of ROI rows, as the pooling ops take them.

    Args:
        box_lists (list[Boxes] or list[RotatedBoxes]): per image, its boxes.

    Returns:
        Tensor[M, 5] of rows (image index, x0, y0, x1, y1) for Boxes (XYXY_ABS), or
        Tensor[M, 6] of rows (image index, x_ctr, y_ctr, w, h, angle in degrees) for
        RotatedBoxes; the dtype and device of the boxes, images in order.
    """
    boxes = torch.cat([box_list.tensor for box_list in box_lists], dim=0)
    # Under tracing len() gives 0-d tensors; shapes_to_tensor keeps them traced.
    counts = shapes_to_tensor([box_list.__len__() for box_list in box_lists], device=boxes.device)
    image_indices = torch.arange(len(box_lists), dtype=boxes.dtype, device=boxes.device)
    image_indices = torch.repeat_interleave(image_indices, counts)
    return torch.cat([image_indices[:, None], boxes], dim=1)


def _output_pair(output_size) -> Tuple[int, int]:
    if isinstance(output_size, int) and not isinstance(output_size, bool):
        output_size = (output_size, output_size)
    if (
        not isinstance(output_size, (tuple, list))
        or len(output_size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in output_size)
    ):
        raise ValueError(f"ROIPooler: output_size must be a positive int or a pair of them, got {output_size!r}")
    return tuple(output_size)


def _level_of_scale(scale: float) -> int:
    """k for a scale 1 / 2^k."""
    level = -math.log2(scale) if scale > 0 else float("nan")
    if not math.isclose(level, round(level)):
        raise ValueError(f"ROIPooler: every scale must be 1 / stride with a power-of-2 stride, got {scale}")
    return int(round(level))


def _make_level_poolers(pooler_type: str, output_size, scales: Sequence[float], sampling_ratio: int) -> nn.ModuleList:
    if pooler_type == "ROIAlign":
        # The original (Detectron) pixel model, without the half-pixel shift.
        poolers = [ROIAlign(output_size, scale, sampling_ratio, aligned=False) for scale in scales]
    elif pooler_type == "ROIAlignV2":
        poolers = [ROIAlign(output_size, scale, sampling_ratio, aligned=True) for scale in scales]
    elif pooler_type == "ROIPool":
        poolers = [RoIPool(output_size, spatial_scale=scale) for scale in scales]
    elif pooler_type == "ROIAlignRotated":
        poolers = [ROIAlignRotated(output_size, scale, sampling_ratio) for scale in scales]
    else:
        raise ValueError(f"ROIPooler: unknown pooler_type {pooler_type!r}, expected one of {_POOLER_TYPES}")
    return nn.ModuleList(poolers)


class ROIPooler(nn.Module):
    """Pools an (output_size) feature for every box from one feature map or a pyramid.

    Attributes:
        output_size (tuple[int, int]): (height, width) of each pooled feature.
        min_level, max_level (int): the levels of the first and last feature maps.
        level_poolers (nn.ModuleList): one pooling op per level.
    """

    def __init__(
        self,
        output_size: Union[int, Tuple[int, int]],
        scales: Sequence[float],
        sampling_ratio: int,
        pooler_type: str,
        canonical_box_size: int = 224,
        canonical_level: int = 4,
    ):
        """
        Args:
            output_size (int or (h, w)): the pooled size.
            scales (list[float]): 1 / stride of each input feature map; strides are powers of 2
                and, with several maps, consecutive levels (1/4, 1/8, 1/16, ...).
            sampling_ratio (int): samples per bin and axis of ROIAlign (0: adaptive).
            pooler_type (str): "ROIAlign" (aligned=False), "ROIAlignV2" (aligned=True),
                "ROIPool" or "ROIAlignRotated" (for RotatedBoxes).
            canonical_box_size (int): sqrt(area) in input pixels of a box that belongs on
                `canonical_level`; 224, ImageNet's crop size, in the FPN paper.
            canonical_level (int): the level of such a box; 4 (stride 16) in the FPN paper.
                Boxes too large or small for the levels present go to the nearest one.
        """
        super().__init__()
        self.output_size = _output_pair(output_size)
        scales = list(scales)
        if not scales:
            raise ValueError("ROIPooler: scales must hold one scale per feature map, got none")
        self.level_poolers = _make_level_poolers(pooler_type, self.output_size, scales, sampling_ratio)

        levels = [_level_of_scale(scale) for scale in scales]
        self.min_level, self.max_level = levels[0], levels[-1]
        if levels != list(range(self.min_level, self.min_level + len(levels))) or self.min_level < 0:
            raise ValueError(
                f"ROIPooler: scales {scales} must be consecutive pyramid levels (strides 2^k, "
                f"2^(k+1), ... with k >= 0)"
            )
        if canonical_box_size <= 0:
            raise ValueError(f"ROIPooler: canonical_box_size must be positive, got {canonical_box_size}")
        self.canonical_level = canonical_level
        self.canonical_box_size = canonical_box_size

    def _check_inputs(self, x: List[torch.Tensor], box_lists: List[Boxes]) -> None:
        if not isinstance(x, list) or not isinstance(box_lists, list):
            raise TypeError(
                f"ROIPooler: x and box_lists must be lists, got {type(x).__name__} and {type(box_lists).__name__}"
            )
        if len(x) != len(self.level_poolers):
            raise ValueError(
                f"ROIPooler: built for {len(self.level_poolers)} feature maps, got a list of {len(x)}"
            )
        # While tracing, sizes are tensors and the batch may legitimately differ.
        if not torch.jit.is_tracing() and len(box_lists) != x[0].size(0):
            raise ValueError(
                f"ROIPooler: x[0] has a batch of {x[0].size(0)} images but box_lists has {len(box_lists)} entries"
            )

    def forward(self, x: List[torch.Tensor], box_lists: List[Boxes]) -> torch.Tensor:
        """
        Args:
            x (list[Tensor[N, C, Hl, Wl]]): the feature maps, one per scale, in order.
            box_lists (list[Boxes] or list[RotatedBoxes]): N entries, the boxes of each image
                in input-image pixels (XYXY_ABS, or XYWHA_ABS for "ROIAlignRotated").

        Returns:
            Tensor[M, C, h, w]: the pooled features of all M boxes, image after image, in the
            dtype of x.
        """
        self._check_inputs(x, box_lists)
        num_channels = x[0].shape[1]
        if len(box_lists) == 0:
            return x[0].new_zeros((0, num_channels) + self.output_size)

        pooler_fmt_boxes = convert_boxes_to_pooler_format(box_lists)
        if len(self.level_poolers) == 1:
            return self.level_poolers[0](x[0], pooler_fmt_boxes)

        level_assignments = assign_boxes_to_levels(
            box_lists, self.min_level, self.max_level, self.canonical_box_size, self.canonical_level
        )
        output = x[0].new_zeros((len(pooler_fmt_boxes), num_channels) + self.output_size)
        # Over the ModuleList alone: TorchScript cannot zip it with a list.
        for level, pooler in enumerate(self.level_poolers):
            indices = nonzero_tuple(level_assignments == level)[0]
            pooled = pooler(x[level], pooler_fmt_boxes[indices])
            # index_put_ (not output[indices] = ...) so that tracing records the scatter.
            output.index_put_((indices,), pooled.to(output.dtype))
        return output
