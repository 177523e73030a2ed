"""Axis-aligned boxes: the `BoxMode` conventions, the `Boxes` container and pairwise IoU maths.

Every `Boxes` tensor is float32, shape (N, 4), XYXY_ABS: (x0, y0, x1, y1) in pixels of the
image the boxes belong to. A box's area is (x1 - x0) * (y1 - y0) (continuous coordinates, no +1).
"""
import math
import numbers
from enum import IntEnum, unique
from typing import List, Tuple, Union

import numpy as np
import torch

_RawBoxType = Union[List[float], Tuple[float, ...], torch.Tensor, np.ndarray]

# Number of values per box in each absolute mode.
_BOX_WIDTH = {0: 4, 1: 4, 4: 5}


@unique
class BoxMode(IntEnum):
    """How a box is written down.

    XYXY_ABS: (x0, y0, x1, y1), absolute pixel coordinates in [0, width] x [0, height].
    XYWH_ABS: (x0, y0, w, h), absolute pixel coordinates (COCO's `bbox`).
    XYXY_REL: (x0, y0, x1, y1) as fractions of the image size (no conversion supported yet).
    XYWH_REL: (x0, y0, w, h) as fractions of the image size (no conversion supported yet).
    XYWHA_ABS: (xc, yc, w, h, a), center, size and counter-clockwise angle in degrees.
    """

    XYXY_ABS = 0
    XYWH_ABS = 1
    XYXY_REL = 2
    XYWH_REL = 3
    XYWHA_ABS = 4

    @staticmethod
    def convert(box: _RawBoxType, from_mode: "BoxMode", to_mode: "BoxMode") -> _RawBoxType:
        """Convert boxes between modes, returning the same container type as `box`.

        Args:
            box: one box as a list/tuple of k numbers, or an (N, k) numpy array or tensor, where
                k is 5 for XYWHA_ABS and 4 for the other modes.
            from_mode, to_mode (BoxMode or int): the mode of `box` and the wanted mode.

        Supported: any pair of XYXY_ABS, XYWH_ABS and XYWHA_ABS. Converting XYWHA_ABS to an
        axis-aligned mode gives the horizontal rectangle enclosing the rotated box; converting
        to XYWHA_ABS gives angle 0. Arrays and tensors keep their dtype (the rotated maths runs
        in float64) and are never modified in place.
        """
        from_mode, to_mode = BoxMode(from_mode), BoxMode(to_mode)
        if from_mode == to_mode:
            return box
        for mode in (from_mode, to_mode):
            if mode in (BoxMode.XYXY_REL, BoxMode.XYWH_REL):
                raise NotImplementedError(
                    f"BoxMode.convert from {from_mode.name} to {to_mode.name}: relative modes "
                    "are not supported yet"
                )
        single_box = isinstance(box, (list, tuple))
        if (single_box and len(box) == 4 and {from_mode, to_mode} == {BoxMode.XYXY_ABS, BoxMode.XYWH_ABS}
                and all(isinstance(v, numbers.Real) for v in box)):
            # One box, as each dataset record's annotation has: plain arithmetic, about 50x
            # faster than a round trip through a tensor.
            x0, y0, a, b = box
            if from_mode == BoxMode.XYWH_ABS:
                return type(box)((x0, y0, x0 + a, y0 + b))
            return type(box)((x0, y0, a - x0, b - y0))
        arr = _boxes_as_tensor(box, from_mode)
        converted = _convert_tensor(arr, from_mode, to_mode)
        if single_box:
            return type(box)(converted.flatten().tolist())
        if isinstance(box, np.ndarray):
            return converted.numpy()
        return converted


def _boxes_as_tensor(box: _RawBoxType, mode: BoxMode) -> torch.Tensor:
    """A 2-D tensor copy of `box` (never a view of the caller's data), checked for `mode`."""
    width = _BOX_WIDTH[mode]
    if isinstance(box, (list, tuple)):
        if len(box) != width:
            raise ValueError(
                f"BoxMode.convert: a single {mode.name} box must have {width} numbers, got "
                f"{len(box)} ({box!r}); pass several boxes as an (N, {width}) array or tensor"
            )
        arr = torch.tensor(box)[None, :]
    elif isinstance(box, np.ndarray):
        arr = torch.from_numpy(np.array(box))
    elif isinstance(box, torch.Tensor):
        arr = box.clone()
    else:
        raise TypeError(
            "BoxMode.convert takes a list, tuple, numpy array or torch.Tensor, got "
            f"{type(box).__name__}"
        )
    if arr.dim() != 2 or arr.shape[1] != width:
        raise ValueError(
            f"BoxMode.convert: {mode.name} boxes must have shape (N, {width}), got "
            f"{tuple(arr.shape)}"
        )
    return arr


def _convert_tensor(arr: torch.Tensor, from_mode: BoxMode, to_mode: BoxMode) -> torch.Tensor:
    """Convert an (N, k) tensor that the caller owns (it may be written in place)."""
    if from_mode == BoxMode.XYWHA_ABS:
        xyxy = _xywha_to_xyxy(arr)
        if to_mode == BoxMode.XYXY_ABS:
            return xyxy
        return _convert_tensor(xyxy, BoxMode.XYXY_ABS, to_mode)
    if to_mode == BoxMode.XYWHA_ABS:
        if from_mode == BoxMode.XYXY_ABS:
            arr = _convert_tensor(arr, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
        return _xywh_to_xywha(arr)
    if from_mode == BoxMode.XYWH_ABS:  # to XYXY_ABS
        arr[:, 2:4] += arr[:, 0:2]
    else:  # XYXY_ABS to XYWH_ABS
        arr[:, 2:4] -= arr[:, 0:2]
    return arr


def _xywha_to_xyxy(arr: torch.Tensor) -> torch.Tensor:
    """Horizontal rectangles enclosing rotated boxes, computed in float64."""
    boxes = arr.double()
    center, size, angle = boxes[:, 0:2], boxes[:, 2:4], boxes[:, 4] * math.pi / 180.0
    cos, sin = angle.cos().abs(), angle.sin().abs()
    # Each side of the enclosing rectangle collects the projections of both box sides.
    enclosing_w = cos * size[:, 0] + sin * size[:, 1]
    enclosing_h = sin * size[:, 0] + cos * size[:, 1]
    top_left = center - torch.stack([enclosing_w, enclosing_h], dim=1) / 2.0
    bottom_right = top_left + torch.stack([enclosing_w, enclosing_h], dim=1)
    return torch.cat([top_left, bottom_right], dim=1).to(arr.dtype)


def _xywh_to_xywha(arr: torch.Tensor) -> torch.Tensor:
    boxes = arr.double()
    center = boxes[:, 0:2] + boxes[:, 2:4] / 2.0
    angle = boxes.new_zeros((boxes.shape[0], 1))
    return torch.cat([center, boxes[:, 2:4], angle], dim=1).to(arr.dtype)


class Boxes:
    """N axis-aligned boxes stored as a float32 tensor (N, 4), XYXY_ABS.

    Behaves like a tensor of boxes: indexing, `len`, iteration, `.to(device)`, `.device`.

    Attributes:
        tensor (Tensor[N, 4]): float32, each row (x0, y0, x1, y1).
    """

    def __init__(self, tensor: torch.Tensor):
        """
        Args:
            tensor (Tensor[N, 4] or array-like): XYXY_ABS boxes; converted to float32. Any
                empty input (e.g. `torch.empty(0)`) gives zero boxes, shape (0, 4).
        """
        if isinstance(tensor, torch.Tensor):
            tensor = tensor.to(torch.float32)
        else:
            tensor = torch.as_tensor(tensor, dtype=torch.float32, device=torch.device("cpu"))
        if tensor.numel() == 0:
            # reshape (not a new tensor) keeps the result tied to the input's device and graph
            tensor = tensor.reshape((-1, 4))
        if not torch.jit.is_scripting() and (tensor.dim() != 2 or tensor.shape[-1] != 4):
            raise ValueError(f"Boxes expects a tensor of shape (N, 4), got {tuple(tensor.shape)}")
        self.tensor = tensor

    def _like(self, tensor: torch.Tensor) -> "Boxes":
        """`tensor` in a container of this object's class (RotatedBoxes stay RotatedBoxes;
        TorchScript knows no subclasses)."""
        if torch.jit.is_scripting():
            return Boxes(tensor)
        return type(self)(tensor)

    def clone(self) -> "Boxes":
        """A copy that shares no storage with this one."""
        return self._like(self.tensor.clone())

    def to(self, device: torch.device) -> "Boxes":
        """The boxes on `device` (a torch.device or its name; boxes stay float32, so no dtype
        argument)."""
        return self._like(self.tensor.to(device=device))

    def area(self) -> torch.Tensor:
        """Tensor[N]: (x1 - x0) * (y1 - y0) of each box (negative for inverted boxes)."""
        box = self.tensor
        return (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])

    def clip(self, box_size: Tuple[int, int]) -> None:
        """Limit x to [0, width] and y to [0, height]; replaces `self.tensor`.

        Args:
            box_size (height, width): the image size.
        """
        finite = torch.isfinite(self.tensor).all(dim=1)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ValueError(f"Boxes.clip: {bad} of {self.tensor.shape[0]} boxes contain inf or NaN")
        h, w = box_size
        x0 = self.tensor[:, 0].clamp(min=0, max=w)
        y0 = self.tensor[:, 1].clamp(min=0, max=h)
        x1 = self.tensor[:, 2].clamp(min=0, max=w)
        y1 = self.tensor[:, 3].clamp(min=0, max=h)
        self.tensor = torch.stack((x0, y0, x1, y1), dim=-1)

    def nonempty(self, threshold: float = 0.0) -> torch.Tensor:
        """BoolTensor[N]: True where both sides are longer than `threshold`."""
        box = self.tensor
        widths = box[:, 2] - box[:, 0]
        heights = box[:, 3] - box[:, 1]
        return (widths > threshold) & (heights > threshold)

    def __getitem__(self, item) -> "Boxes":
        """Select boxes: `boxes[3]` (one box, still 2-D), `boxes[2:10]`, `boxes[bool_mask]`,
        `boxes[index_tensor]` (in TorchScript: tensors only). The result may share storage
        with this object."""
        if isinstance(item, int):
            return self._like(self.tensor[item].view(1, -1))
        selected = self.tensor[item]
        if not torch.jit.is_scripting() and selected.dim() != 2:
            raise IndexError(
                f"Indexing {type(self).__name__} with {repr(item)} gave shape "
                f"{tuple(selected.shape)}, not a matrix of boxes"
            )
        return self._like(selected)

    def __len__(self) -> int:
        return self.tensor.shape[0]

    @torch.jit.unused
    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.tensor})"

    def inside_box(self, box_size: Tuple[int, int], boundary_threshold: int = 0) -> torch.Tensor:
        """BoolTensor[N]: boxes lying inside [0, width) x [0, height), allowing each side to
        stick out by at most `boundary_threshold` pixels.

        Args:
            box_size (height, width): the reference size.
        """
        height, width = box_size
        box = self.tensor
        return (
            (box[..., 0] >= -boundary_threshold)
            & (box[..., 1] >= -boundary_threshold)
            & (box[..., 2] < width + boundary_threshold)
            & (box[..., 3] < height + boundary_threshold)
        )

    def get_centers(self) -> torch.Tensor:
        """Tensor[N, 2]: (x, y) centers."""
        return (self.tensor[:, :2] + self.tensor[:, 2:]) / 2

    def scale(self, scale_x: float, scale_y: float) -> None:
        """Multiply x coordinates by `scale_x` and y by `scale_y`, in place."""
        self.tensor[:, 0::2] *= scale_x
        self.tensor[:, 1::2] *= scale_y

    @classmethod
    def cat(cls, boxes_list: List["Boxes"]) -> "Boxes":
        """Concatenate into a new object that shares no storage with the inputs.
        An empty list gives zero boxes."""
        if not torch.jit.is_scripting():
            _check_cat_list(cls, boxes_list)
        if len(boxes_list) == 0:
            return cls(torch.empty(0))
        return cls(torch.cat([b.tensor for b in boxes_list], dim=0))

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    @torch.jit.unused
    def __iter__(self):  # -> Iterator[Tensor]; TorchScript cannot parse that type
        """Yield one box at a time as a Tensor of shape (4,)."""
        yield from self.tensor


def _check_cat_list(cls: type, boxes_list) -> None:
    if not isinstance(boxes_list, (list, tuple)):
        raise TypeError(f"{cls.__name__}.cat takes a list or tuple, got {type(boxes_list).__name__}")
    for box in boxes_list:
        if not isinstance(box, cls):
            raise TypeError(f"{cls.__name__}.cat: got an element of type {type(box).__name__}")


def pairwise_intersection(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """Intersection areas of all pairs.

    Args:
        boxes1, boxes2 (Boxes): N and M boxes, XYXY_ABS.

    Returns:
        Tensor[N, M]
    """
    a, b = boxes1.tensor, boxes2.tensor
    overlap = torch.min(a[:, None, 2:], b[:, 2:]) - torch.max(a[:, None, :2], b[:, :2])
    return overlap.clamp_(min=0).prod(dim=2)


def pairwise_iou(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """Intersection over union of all pairs; 0 for pairs that do not overlap (so empty boxes
    give 0, never NaN).

    Args:
        boxes1, boxes2 (Boxes): N and M boxes, XYXY_ABS.

    Returns:
        Tensor[N, M]
    """
    area1 = boxes1.area()
    area2 = boxes2.area()
    inter = pairwise_intersection(boxes1, boxes2)
    zero = torch.zeros(1, dtype=inter.dtype, device=inter.device)
    return torch.where(inter > 0, inter / (area1[:, None] + area2 - inter), zero)


def pairwise_ioa(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """Intersection over the area of the box from `boxes2`, for all pairs; 0 where the pair
    does not overlap.

    Args:
        boxes1, boxes2 (Boxes): N and M boxes, XYXY_ABS.

    Returns:
        Tensor[N, M]
    """
    area2 = boxes2.area()
    inter = pairwise_intersection(boxes1, boxes2)
    zero = torch.zeros(1, dtype=inter.dtype, device=inter.device)
    return torch.where(inter > 0, inter / area2, zero)


def pairwise_point_box_distance(points: torch.Tensor, boxes: Boxes) -> torch.Tensor:
    """Signed distances from each point to the four sides of each box.

    Args:
        points (Tensor[N, 2]): (x, y) points.
        boxes (Boxes): M boxes, XYXY_ABS.

    Returns:
        Tensor[N, M, 4]: (left, top, right, bottom) distances: x - x0, y - y0, x1 - x, y1 - y.
        All four are positive exactly when the point is strictly inside the box.
    """
    if points.dim() != 2 or points.shape[1] != 2:
        raise ValueError(
            "pairwise_point_box_distance: points must have shape (N, 2), got "
            f"{tuple(points.shape)}"
        )
    x, y = points[:, 0:1], points[:, 1:2]
    x0, y0, x1, y1 = boxes.tensor[None].unbind(dim=2)
    return torch.stack([x - x0, y - y0, x1 - x, y1 - y], dim=2)


def matched_pairwise_iou(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """IoU of the i-th box of `boxes1` with the i-th box of `boxes2` (the diagonal of
    `pairwise_iou`). Two empty boxes give NaN (0 / 0), as in Detectron2.

    Args:
        boxes1, boxes2 (Boxes): N boxes each, XYXY_ABS.

    Returns:
        Tensor[N]
    """
    if len(boxes1) != len(boxes2):
        raise ValueError(
            f"matched_pairwise_iou needs the same number of boxes, got {len(boxes1)} and "
            f"{len(boxes2)}"
        )
    area1 = boxes1.area()
    area2 = boxes2.area()
    a, b = boxes1.tensor, boxes2.tensor
    overlap = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0)
    inter = overlap[:, 0] * overlap[:, 1]
    return inter / (area1 + area2 - inter)
