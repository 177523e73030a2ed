"""Anchor generators: the reference boxes that RPN and RetinaNet classify and regress.

Each feature level i with stride s_i gets a set of "cell anchors" (one per size and aspect
ratio, and per angle for rotated anchors) centered at (0, 0); the anchors of the level are the
cell anchors shifted to every grid position (x, y) = ((col + offset) * s_i, (row + offset) * s_i).
Anchors are ordered position-major (row, then column), then cell anchor, matching the layout
of a head's (N, A * B, H, W) output once it is permuted to (N, H, W, A, B).

Sizes and aspect ratios follow Detectron2 exactly (anchor side lengths are computed in double
precision and rounded once to float32; no integer quantization as in the original Detectron),
so anchors, and therefore checkpoints, are interchangeable with Detectron2's.
"""
import math
from typing import List, Sequence, Tuple

import torch
from torch import nn

from detzoo.config import configurable
from detzoo.layers import ShapeSpec
from detzoo.structures import Boxes, RotatedBoxes
from detzoo.utils.registry import Registry

__all__ = [
    "ANCHOR_GENERATOR_REGISTRY",
    "BufferList",
    "DefaultAnchorGenerator",
    "RotatedAnchorGenerator",
    "build_anchor_generator",
]

ANCHOR_GENERATOR_REGISTRY = Registry("ANCHOR_GENERATOR")
ANCHOR_GENERATOR_REGISTRY.__doc__ = """
Anchor generators: modules that map a list of feature maps to one set of anchors per map.
Registered classes are built as `cls(cfg, input_shape: list[ShapeSpec])`.
"""


class BufferList(nn.Module):
    """An ordered list of tensors held as buffers named "0", "1", ...

    The buffers move with `.to()` / `.cuda()` like any buffer but are non-persistent: they
    are recomputed from the constructor arguments, so they stay out of the state dict and
    checkpoints from Detectron2 (which has no such keys) load without warnings.
    """

    def __init__(self, buffers: Sequence[torch.Tensor] = ()):
        super().__init__()
        for index, buffer in enumerate(buffers):
            self.register_buffer(str(index), buffer, persistent=False)

    def __len__(self) -> int:
        return len(self._buffers)

    def tensors(self) -> List[torch.Tensor]:
        """The buffers in order, as a list (also in TorchScript, which cannot iterate self)."""
        return [buffer for _, buffer in self.named_buffers()]

    def __iter__(self):
        return iter(self._buffers.values())

    def __getitem__(self, index: int) -> torch.Tensor:
        return list(self._buffers.values())[index]


def _grid_shifts(
    grid_size: List[int], stride: int, offset: float, device: torch.device
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The (x, y) input-image coordinates of every position of an H x W grid, row-major.

    Returns:
        shift_x, shift_y (Tensor[H * W]): float32.
    """
    grid_height, grid_width = grid_size
    start = offset * stride
    # arange(start, end, step) in float32 rather than (arange(n) + offset) * stride: the
    # values then round exactly as Detectron2's do. max() lets an empty grid give no shifts.
    shifts_x = torch.arange(start, max(grid_width * stride, start), step=stride, dtype=torch.float32, device=device)
    shifts_y = torch.arange(start, max(grid_height * stride, start), step=stride, dtype=torch.float32, device=device)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    return shift_x.reshape(-1), shift_y.reshape(-1)


def _broadcast_params(params, num_features: int, name: str) -> List[List[float]]:
    """One list of values per feature map.

    `params` is either a flat list of numbers (shared by every map), a list holding one list
    (also shared), or one list per feature map.
    """
    if not isinstance(params, (list, tuple)):
        raise TypeError(f"anchor generator: {name} must be a list, got {type(params).__name__} {params!r}")
    if len(params) == 0:
        raise ValueError(f"anchor generator: {name} must not be empty")
    if not isinstance(params[0], (list, tuple)):
        return [list(params)] * num_features
    if len(params) == 1:
        return [list(params[0])] * num_features
    if len(params) != num_features:
        raise ValueError(
            f"anchor generator: {name} has {len(params)} lists but there are {num_features} "
            f"feature maps; give one list per feature map, or a single list shared by all"
        )
    return [list(p) for p in params]


def _check_offset(offset: float) -> float:
    if not 0.0 <= offset < 1.0:
        raise ValueError(f"anchor generator: offset must be in [0, 1) (a fraction of the stride), got {offset}")
    return offset


def _anchor_side_lengths(size: float, aspect_ratio: float) -> Tuple[float, float]:
    """(w, h) of the anchor with area size^2 and h / w == aspect_ratio, in double precision."""
    if size <= 0 or aspect_ratio <= 0:
        raise ValueError(
            f"anchor generator: sizes and aspect ratios must be positive, got size {size}, "
            f"aspect ratio {aspect_ratio}"
        )
    # w * h = size^2 and h = aspect_ratio * w give w = sqrt(size^2 / aspect_ratio).
    width = math.sqrt(size**2.0 / aspect_ratio)
    return width, aspect_ratio * width


def _check_features(features, num_levels: int, name: str) -> None:
    if not isinstance(features, (list, tuple)):
        raise TypeError(f"{name}: features must be a list of (N, C, H, W) tensors, got {type(features).__name__}")
    if len(features) != num_levels:
        raise ValueError(
            f"{name}: got {len(features)} feature maps, but the generator was built for "
            f"{num_levels} strides"
        )


@ANCHOR_GENERATOR_REGISTRY.register()
class DefaultAnchorGenerator(nn.Module):
    """Axis-aligned anchors of Faster R-CNN (Ren et al. 2015): every size x aspect ratio at
    every position of every feature map.

    Attributes:
        box_dim (int): 4, anchors are XYXY_ABS.
        strides (list[int]): stride of each feature map.
        offset (float): anchor centers sit at (index + offset) * stride.
        cell_anchors (BufferList): per level, Tensor[A, 4] XYXY_ABS centered at (0, 0).
    """

    box_dim: torch.jit.Final[int] = 4

    @configurable
    def __init__(self, *, sizes, aspect_ratios, strides: List[int], offset: float = 0.5):
        """
        Args:
            sizes (list[float] or list[list[float]]): anchor sizes (sqrt of the area, in
                input-image pixels), shared by all feature maps or one list per map.
            aspect_ratios (list[float] or list[list[float]]): height / width ratios; same
                sharing rule as `sizes`.
            strides (list[int]): stride of each feature map, in input-image pixels.
            offset (float): in [0, 1); the first anchor's center is offset * stride from the
                image's top-left corner. 0.5 centers anchors on feature-map pixels.
        """
        super().__init__()
        self.strides = list(strides)
        self.num_features = len(self.strides)
        sizes = _broadcast_params(sizes, self.num_features, "sizes")
        aspect_ratios = _broadcast_params(aspect_ratios, self.num_features, "aspect_ratios")
        self.cell_anchors = BufferList(
            [self.generate_cell_anchors(s, a).float() for s, a in zip(sizes, aspect_ratios)]
        )
        self.offset = _check_offset(offset)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        return {
            "sizes": cfg.MODEL.ANCHOR_GENERATOR.SIZES,
            "aspect_ratios": cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS,
            "strides": [shape.stride for shape in input_shape],
            "offset": cfg.MODEL.ANCHOR_GENERATOR.OFFSET,
        }

    @property
    @torch.jit.unused
    def num_anchors(self) -> List[int]:
        """list[int]: number of anchors per position on each feature map (sizes x ratios)."""
        return [len(cell_anchors) for cell_anchors in self.cell_anchors]

    @property
    @torch.jit.unused
    def num_cell_anchors(self) -> List[int]:
        """Alias of `num_anchors` (Detectron2's older name)."""
        return self.num_anchors

    def generate_cell_anchors(self, sizes=(32, 64, 128, 256, 512), aspect_ratios=(0.5, 1, 2)) -> torch.Tensor:
        """Anchors of every size and aspect ratio, centered at (0, 0).

        Returns:
            Tensor[len(sizes) * len(aspect_ratios), 4]: XYXY_ABS, size-major (all ratios of
            the first size, then the second size, ...).
        """
        anchors = []
        for size in sizes:
            for aspect_ratio in aspect_ratios:
                width, height = _anchor_side_lengths(size, aspect_ratio)
                anchors.append([-width / 2.0, -height / 2.0, width / 2.0, height / 2.0])
        return torch.tensor(anchors, dtype=torch.float32).reshape(-1, 4)

    def _grid_anchors(self, grid_sizes: List[List[int]]) -> List[torch.Tensor]:
        """Per level, Tensor[H * W * A, 4]: the cell anchors shifted to every grid position."""
        anchors = []
        for grid_size, stride, cell_anchors in zip(grid_sizes, self.strides, self.cell_anchors.tensors()):
            shift_x, shift_y = _grid_shifts(grid_size, stride, self.offset, cell_anchors.device)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            anchors.append((shifts[:, None, :] + cell_anchors[None, :, :]).reshape(-1, 4))
        return anchors

    def forward(self, features: List[torch.Tensor]) -> List[Boxes]:
        """
        Args:
            features (list[Tensor[N, C, Hi, Wi]]): one feature map per stride; only their
                spatial sizes are read.

        Returns:
            list[Boxes]: per level, Hi * Wi * A anchors, XYXY_ABS in input-image pixels.
        """
        if not torch.jit.is_scripting():
            _check_features(features, self.num_features, type(self).__name__)
        grid_sizes = [feature_map.shape[-2:] for feature_map in features]
        return [Boxes(anchors) for anchors in self._grid_anchors(grid_sizes)]


@ANCHOR_GENERATOR_REGISTRY.register()
class RotatedAnchorGenerator(nn.Module):
    """Rotated anchors of Rotated RPN (Ma et al. 2018, "Arbitrary-Oriented Scene Text
    Detection via Rotation Proposals"): every size x aspect ratio x angle at every position.

    Attributes:
        box_dim (int): 5, anchors are XYWHA_ABS (angles in degrees, counter-clockwise).
        cell_anchors (BufferList): per level, Tensor[A, 5] XYWHA_ABS centered at (0, 0).
    """

    box_dim: torch.jit.Final[int] = 5

    @configurable
    def __init__(self, *, sizes, aspect_ratios, strides: List[int], angles, offset: float = 0.5):
        """
        Args:
            sizes, aspect_ratios, strides, offset: as for `DefaultAnchorGenerator`.
            angles (list[float] or list[list[float]]): anchor angles in degrees
                (counter-clockwise); same sharing rule as `sizes`.
        """
        super().__init__()
        self.strides = list(strides)
        self.num_features = len(self.strides)
        sizes = _broadcast_params(sizes, self.num_features, "sizes")
        aspect_ratios = _broadcast_params(aspect_ratios, self.num_features, "aspect_ratios")
        angles = _broadcast_params(angles, self.num_features, "angles")
        self.cell_anchors = BufferList(
            [self.generate_cell_anchors(s, r, a).float() for s, r, a in zip(sizes, aspect_ratios, angles)]
        )
        self.offset = _check_offset(offset)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        return {
            "sizes": cfg.MODEL.ANCHOR_GENERATOR.SIZES,
            "aspect_ratios": cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS,
            "strides": [shape.stride for shape in input_shape],
            "offset": cfg.MODEL.ANCHOR_GENERATOR.OFFSET,
            "angles": cfg.MODEL.ANCHOR_GENERATOR.ANGLES,
        }

    @property
    @torch.jit.unused
    def num_anchors(self) -> List[int]:
        """list[int]: number of anchors per position on each feature map
        (sizes x ratios x angles)."""
        return [len(cell_anchors) for cell_anchors in self.cell_anchors]

    @property
    @torch.jit.unused
    def num_cell_anchors(self) -> List[int]:
        """Alias of `num_anchors` (Detectron2's older name)."""
        return self.num_anchors

    def generate_cell_anchors(
        self,
        sizes=(32, 64, 128, 256, 512),
        aspect_ratios=(0.5, 1, 2),
        angles=(-90, -60, -30, 0, 30, 60, 90),
    ) -> torch.Tensor:
        """Anchors of every size, aspect ratio and angle, centered at (0, 0).

        Returns:
            Tensor[len(sizes) * len(aspect_ratios) * len(angles), 5]: XYWHA_ABS, ordered by
            size, then aspect ratio, then angle.
        """
        anchors = []
        for size in sizes:
            for aspect_ratio in aspect_ratios:
                width, height = _anchor_side_lengths(size, aspect_ratio)
                anchors.extend([0.0, 0.0, width, height, float(angle)] for angle in angles)
        return torch.tensor(anchors, dtype=torch.float32).reshape(-1, 5)

    def _grid_anchors(self, grid_sizes: List[List[int]]) -> List[torch.Tensor]:
        """Per level, Tensor[H * W * A, 5]: the cell anchors moved to every grid position."""
        anchors = []
        for grid_size, stride, cell_anchors in zip(grid_sizes, self.strides, self.cell_anchors.tensors()):
            shift_x, shift_y = _grid_shifts(grid_size, stride, self.offset, cell_anchors.device)
            zeros = torch.zeros_like(shift_x)
            shifts = torch.stack((shift_x, shift_y, zeros, zeros, zeros), dim=1)
            anchors.append((shifts[:, None, :] + cell_anchors[None, :, :]).reshape(-1, 5))
        return anchors

    def forward(self, features: List[torch.Tensor]) -> List[RotatedBoxes]:
        """
        Args:
            features (list[Tensor[N, C, Hi, Wi]]): one feature map per stride; only their
                spatial sizes are read.

        Returns:
            list[RotatedBoxes]: per level, Hi * Wi * A anchors, XYWHA_ABS.
        """
        if not torch.jit.is_scripting():
            _check_features(features, self.num_features, type(self).__name__)
        grid_sizes = [feature_map.shape[-2:] for feature_map in features]
        return [RotatedBoxes(anchors) for anchors in self._grid_anchors(grid_sizes)]


def build_anchor_generator(cfg, input_shape: List[ShapeSpec]) -> nn.Module:
    """The anchor generator named by `cfg.MODEL.ANCHOR_GENERATOR.NAME`, built for the feature
    maps described by `input_shape` (one ShapeSpec per level, with its stride)."""
    name = cfg.MODEL.ANCHOR_GENERATOR.NAME
    return ANCHOR_GENERATOR_REGISTRY.get(name)(cfg, input_shape)
