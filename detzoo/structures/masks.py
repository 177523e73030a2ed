"""Instance masks of one image in three forms: full-image bitmaps (`BitMasks`), COCO polygons
(`PolygonMasks`) and small per-box masks (`ROIMasks`), plus the polygon helpers that Mask R-CNN
uses to build its training targets."""
import itertools
from typing import Any, Iterator, List, Optional, Union

import numpy as np
import pycocotools.mask as mask_util
import torch
from torchvision.ops import roi_align

from detzoo.layers.mask_ops import paste_masks_in_image

from .boxes import Boxes


def polygon_area(x: np.ndarray, y: np.ndarray) -> float:
    """Area of one simple polygon with vertices (x[i], y[i]), by the shoelace formula."""
    return 0.5 * np.abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def _check_polygon(polygon: np.ndarray, where: str) -> None:
    """Raise unless `polygon` is a flat [x0, y0, x1, y1, ...] vector with >= 3 points."""
    if polygon.ndim != 1:
        raise ValueError(
            f"{where}: a polygon must be a flat vector [x0, y0, x1, y1, ...], got an array of "
            f"shape {polygon.shape}"
        )
    if len(polygon) % 2 != 0 or len(polygon) < 6:
        raise ValueError(
            f"{where}: a polygon needs an even number of coordinates and at least 3 points "
            f"(6 numbers); cannot create a polygon from {len(polygon)} coordinates"
        )


def polygons_to_bitmask(polygons: List[np.ndarray], height: int, width: int) -> np.ndarray:
    """Rasterize the union of polygons with the COCO API.

    Args:
        polygons (list[ndarray]): each a flat vector [x0, y0, x1, y1, ...] in pixels.
        height, width (int): size of the mask.

    Returns:
        ndarray[bool] of shape (height, width); all False for an empty list.
    """
    if len(polygons) == 0:
        return np.zeros((height, width), dtype=bool)
    arrays = [np.asarray(p, dtype=np.float64) for p in polygons]
    for polygon in arrays:
        _check_polygon(polygon, "polygons_to_bitmask")
    rles = mask_util.frPyObjects(arrays, height, width)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def rasterize_polygons_within_box(
    polygons: List[np.ndarray], box: np.ndarray, mask_size: int
) -> torch.Tensor:
    """Rasterize an instance's polygons into a mask_size x mask_size grid laid over `box`.

    This makes Mask R-CNN's mask targets: the polygons are shifted to the box's corner,
    stretched so the box becomes the square grid, then rasterized. Input polygons are not
    modified.

    Args:
        polygons (list[ndarray]): the instance's polygons, flat [x0, y0, x1, y1, ...] vectors.
        box (ndarray[4]): XYXY_ABS.
        mask_size (int): side of the output grid.

    Returns:
        BoolTensor[mask_size, mask_size]
    """
    box = np.asarray(box)
    w, h = box[2] - box[0], box[3] - box[1]
    # a floor of 0.1 pixel keeps degenerate boxes from blowing the scale up
    ratio_w = mask_size / max(w, 0.1)
    ratio_h = mask_size / max(h, 0.1)
    scale = np.array([ratio_w, ratio_h])
    corner = np.array([box[0], box[1]])
    transformed = [
        ((np.asarray(p, dtype=np.float64).reshape(-1, 2) - corner) * scale).reshape(-1)
        for p in polygons
    ]
    return torch.from_numpy(polygons_to_bitmask(transformed, mask_size, mask_size))


class BitMasks:
    """N full-image instance masks as a bool tensor (N, H, W).

    Attributes:
        tensor (BoolTensor[N, H, W])
        image_size (torch.Size): (H, W).
    """

    def __init__(self, tensor: Union[torch.Tensor, np.ndarray]):
        """
        Args:
            tensor (Tensor or ndarray): (N, H, W), converted to bool.
        """
        if isinstance(tensor, torch.Tensor):
            tensor = tensor.to(torch.bool)
        else:
            tensor = torch.as_tensor(tensor, dtype=torch.bool, device=torch.device("cpu"))
        if tensor.dim() != 3:
            raise ValueError(f"BitMasks expects shape (N, H, W), got {tuple(tensor.shape)}")
        self.image_size = tensor.shape[1:]
        self.tensor = tensor

    def to(self, *args: Any, **kwargs: Any) -> "BitMasks":
        """Same masks with the tensor moved by `Tensor.to(*args, **kwargs)`."""
        return BitMasks(self.tensor.to(*args, **kwargs))

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def __getitem__(self, item: Union[int, slice, torch.Tensor]) -> "BitMasks":
        """Select masks: `masks[3]` (one mask, still (1, H, W)), `masks[2:10]`,
        `masks[bool_mask]`, `masks[index_tensor]`. The result may share storage."""
        if isinstance(item, int):
            return BitMasks(self.tensor[item].unsqueeze(0))
        selected = self.tensor[item]
        if selected.dim() != 3:
            raise IndexError(
                f"Indexing BitMasks with {item!r} gave shape {tuple(selected.shape)}, "
                "not (N, H, W)"
            )
        return BitMasks(selected)

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield from self.tensor

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_instances={len(self.tensor)})"

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def nonempty(self) -> torch.Tensor:
        """BoolTensor[N]: True where the mask has at least one pixel set."""
        return self.tensor.flatten(1).any(dim=1)

    def area(self) -> torch.Tensor:
        """LongTensor[N]: number of pixels set in each mask."""
        return self.tensor.flatten(1).sum(dim=1)

    @staticmethod
    def from_polygon_masks(
        polygon_masks: Union["PolygonMasks", List[List[np.ndarray]]], height: int, width: int
    ) -> "BitMasks":
        """Rasterize polygons (a PolygonMasks or its `polygons` list) into (N, height, width)."""
        if isinstance(polygon_masks, PolygonMasks):
            polygon_masks = polygon_masks.polygons
        masks = [polygons_to_bitmask(p, height, width) for p in polygon_masks]
        if len(masks) == 0:
            return BitMasks(torch.empty(0, height, width, dtype=torch.bool))
        return BitMasks(torch.from_numpy(np.stack(masks)))

    @staticmethod
    def from_roi_masks(
        roi_masks: "ROIMasks",
        height: int,
        width: int,
        boxes: Optional[Union[Boxes, torch.Tensor]] = None,
    ) -> "BitMasks":
        """Paste ROI masks into full (height, width) images, see `ROIMasks.to_bitmasks`.

        `boxes` (the ROI of each mask, XYXY_ABS) is required; it is a keyword here because
        Detectron2's version has no such parameter and cannot work without it.
        """
        if boxes is None:
            raise TypeError(
                "BitMasks.from_roi_masks needs the ROI boxes the masks belong to: "
                "from_roi_masks(roi_masks, height, width, boxes=...)"
            )
        return roi_masks.to_bitmasks(boxes, height, width)

    def crop_and_resize(self, boxes: torch.Tensor, mask_size: int) -> torch.Tensor:
        """Crop mask i to box i and resample it to mask_size x mask_size (Mask R-CNN targets).

        Resampling is ROIAlign (aligned=True, adaptive sampling) of the 0/1 masks, then a
        0.5 threshold. Less lossy than rasterizing polygons, at the cost of full-size masks.

        Args:
            boxes (Tensor[N, 4]): XYXY_ABS, one per mask.
            mask_size (int): side of the output.

        Returns:
            BoolTensor[N, mask_size, mask_size] on the masks' device.
        """
        _check_boxes_for_masks(boxes, len(self), "BitMasks.crop_and_resize")
        device = self.tensor.device
        batch_index = torch.arange(len(boxes), device=device, dtype=torch.float32)[:, None]
        rois = torch.cat([batch_index, boxes.to(device=device, dtype=torch.float32)], dim=1)
        masks = self.tensor.to(dtype=torch.float32)[:, None, :, :]
        # TODO: switch to detzoo.layers.ROIAlign once it lands (same op, same arguments).
        resized = roi_align(masks, rois, (mask_size, mask_size), 1.0, 0, aligned=True)
        return resized.squeeze(1) >= 0.5

    def get_bounding_boxes(self) -> Boxes:
        """Tight XYXY_ABS boxes around each mask's pixels (pixel x covers [x, x + 1));
        all zeros for an empty mask."""
        num_masks, height, width = self.tensor.shape
        boxes = torch.zeros(num_masks, 4, dtype=torch.float32, device=self.tensor.device)
        if num_masks == 0 or height == 0 or width == 0:
            return Boxes(boxes)
        x_start, x_end = _first_last_set(self.tensor.any(dim=1))
        y_start, y_end = _first_last_set(self.tensor.any(dim=2))
        found = self.nonempty()[:, None]
        spans = torch.stack([x_start, y_start, x_end, y_end], dim=1).to(torch.float32)
        return Boxes(torch.where(found, spans, boxes))

    @staticmethod
    def cat(bitmasks_list: List["BitMasks"]) -> "BitMasks":
        """Concatenate masks of the same image size (a new tensor)."""
        _check_cat_list(bitmasks_list, BitMasks)
        return type(bitmasks_list[0])(torch.cat([bm.tensor for bm in bitmasks_list], dim=0))


def _first_last_set(any_set: torch.Tensor):
    """For BoolTensor[N, L]: index of the first True and one past the last True per row."""
    length = any_set.shape[1]
    positions = torch.arange(length, device=any_set.device)
    first = torch.where(any_set, positions, length).min(dim=1).values
    last = torch.where(any_set, positions, -1).max(dim=1).values + 1
    return first, last


def _check_boxes_for_masks(boxes: torch.Tensor, num_masks: int, where: str) -> None:
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"{where}: boxes must be a Tensor (N, 4), got {type(boxes).__name__}")
    if boxes.dim() != 2 or boxes.shape[1] != 4 or len(boxes) != num_masks:
        raise ValueError(
            f"{where}: boxes must have shape ({num_masks}, 4), one per mask, got "
            f"{tuple(boxes.shape)}"
        )


def _check_cat_list(items: List[Any], cls: type) -> None:
    if not isinstance(items, (list, tuple)) or len(items) == 0:
        raise ValueError(f"{cls.__name__}.cat needs a non-empty list or tuple")
    for i, item in enumerate(items):
        if not isinstance(item, cls):
            raise TypeError(f"{cls.__name__}.cat: element {i} is a {type(item).__name__}")


class PolygonMasks:
    """N instance masks as COCO polygons, kept on the CPU.

    Attributes:
        polygons (list[list[ndarray]]): for each instance, its polygons (an instance may have
            several parts, or none); each a float64 vector [x0, y0, x1, y1, ...] in pixels.
    """

    def __init__(self, polygons: List[List[Union[torch.Tensor, np.ndarray]]]):
        """
        Args:
            polygons (list[list[ndarray or Tensor or list]]): per instance, a list of polygons,
                each [x0, y0, ..., xn, yn] with n >= 3 points. Converted to float64 arrays.
        """
        if not isinstance(polygons, list):
            raise ValueError(
                "Cannot create PolygonMasks: expected a list (one entry per instance) of lists "
                f"of polygons, got {type(polygons).__name__}"
            )
        self.polygons: List[List[np.ndarray]] = [
            _instance_polygons(instance, i) for i, instance in enumerate(polygons)
        ]

    def to(self, *args: Any, **kwargs: Any) -> "PolygonMasks":
        """No-op: polygons stay on the CPU."""
        return self

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def get_bounding_boxes(self) -> Boxes:
        """Tight XYXY_ABS boxes around each instance's polygons.

        As in Detectron2 the upper corner starts from (0, 0), so it is never negative, and an
        instance without polygons gets (inf, inf, 0, 0).
        """
        num_instances = len(self.polygons)
        lower = torch.full((num_instances, 2), float("inf"), dtype=torch.float32)
        upper = torch.zeros((num_instances, 2), dtype=torch.float32)
        points, instance_of_point = self._all_points()
        if len(points):
            points = torch.from_numpy(points).to(torch.float32)
            index = torch.from_numpy(instance_of_point)[:, None].expand(-1, 2)
            lower.scatter_reduce_(0, index, points, reduce="amin")
            upper.scatter_reduce_(0, index, points, reduce="amax")
        return Boxes(torch.cat([lower, upper], dim=1))

    def _all_points(self):
        """Every vertex as rows of (P, 2) float64, with the instance index of each row."""
        arrays = [p.reshape(-1, 2) for instance in self.polygons for p in instance]
        if not arrays:
            return np.zeros((0, 2)), np.zeros(0, dtype=np.int64)
        counts = [sum(len(p) // 2 for p in instance) for instance in self.polygons]
        instance_of_point = np.repeat(np.arange(len(self.polygons)), counts)
        return np.concatenate(arrays), instance_of_point

    def nonempty(self) -> torch.Tensor:
        """BoolTensor[N]: True where the instance has at least one polygon."""
        return torch.tensor([len(instance) > 0 for instance in self.polygons], dtype=torch.bool)

    def __getitem__(self, item: Union[int, slice, List[int], torch.Tensor]) -> "PolygonMasks":
        """Select instances by an int, a slice, a list of ints, a bool mask (Tensor or ndarray)
        of length N, or an integer index Tensor/ndarray. Polygons are shared, not copied."""
        if isinstance(item, (int, np.integer)):
            selected = [self.polygons[item]]
        elif isinstance(item, slice):
            selected = self.polygons[item]
        elif isinstance(item, list):
            selected = [self.polygons[i] for i in item]
        elif isinstance(item, (torch.Tensor, np.ndarray)):
            selected = [self.polygons[i] for i in self._tensor_index(item)]
        else:
            raise TypeError(
                "PolygonMasks can be indexed by int, slice, list[int], or a bool/integer "
                f"Tensor; got {type(item).__name__}"
            )
        return PolygonMasks(selected)

    def _tensor_index(self, item: Union[torch.Tensor, np.ndarray]) -> List[int]:
        item = torch.as_tensor(item).cpu()
        if item.dim() != 1:
            raise IndexError(
                f"PolygonMasks: index tensor must be 1-D, got shape {tuple(item.shape)}"
            )
        if item.dtype == torch.bool:
            if len(item) != len(self):
                raise IndexError(
                    f"PolygonMasks: bool mask of length {len(item)} for {len(self)} instances"
                )
            return item.nonzero().squeeze(1).tolist()
        if item.dtype in (torch.int16, torch.int32, torch.int64):
            return item.tolist()
        raise ValueError(f"Unsupported tensor dtype={item.dtype} for indexing PolygonMasks")

    def __iter__(self) -> Iterator[List[np.ndarray]]:
        """Yield each instance's list of polygons (float64 vectors)."""
        return iter(self.polygons)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_instances={len(self.polygons)})"

    def __len__(self) -> int:
        return len(self.polygons)

    def crop_and_resize(self, boxes: torch.Tensor, mask_size: int) -> torch.Tensor:
        """Rasterize instance i inside box i at mask_size x mask_size (Mask R-CNN targets),
        see `rasterize_polygons_within_box`.

        Args:
            boxes (Tensor[N, 4]): XYXY_ABS, one per instance.
            mask_size (int): side of the output.

        Returns:
            BoolTensor[N, mask_size, mask_size] on the boxes' device.
        """
        _check_boxes_for_masks(boxes, len(self), "PolygonMasks.crop_and_resize")
        device = boxes.device
        if len(boxes) == 0:
            return torch.empty(0, mask_size, mask_size, dtype=torch.bool, device=device)
        # rasterization runs on the CPU, where the polygons live
        boxes_np = boxes.detach().to("cpu").numpy()
        results = [
            rasterize_polygons_within_box(instance, box, mask_size)
            for instance, box in zip(self.polygons, boxes_np)
        ]
        return torch.stack(results, dim=0).to(device=device)

    def area(self) -> torch.Tensor:
        """DoubleTensor[N]: summed shoelace areas of each instance's polygons (overlaps and
        holes are not accounted for)."""
        flat = [p for instance in self.polygons for p in instance]
        polygons_per_instance = [len(instance) for instance in self.polygons]
        instance_of_polygon = np.repeat(np.arange(len(self.polygons)), polygons_per_instance)
        areas = _polygon_areas(flat)
        per_instance = np.bincount(instance_of_polygon, weights=areas, minlength=len(self))
        return torch.from_numpy(per_instance.astype(np.float64))

    @staticmethod
    def cat(polymasks_list: List["PolygonMasks"]) -> "PolygonMasks":
        """Concatenate the instances of several PolygonMasks (polygons are shared)."""
        _check_cat_list(polymasks_list, PolygonMasks)
        return type(polymasks_list[0])(
            list(itertools.chain.from_iterable(pm.polygons for pm in polymasks_list))
        )


def _instance_polygons(instance: List[Any], index: int) -> List[np.ndarray]:
    if not isinstance(instance, list):
        raise ValueError(
            f"Cannot create PolygonMasks: instance {index} must be a list of polygons, got "
            f"{type(instance).__name__}"
        )
    arrays = []
    for polygon in instance:
        if isinstance(polygon, torch.Tensor):
            polygon = polygon.detach().cpu().numpy()
        # copy=False: indexing and cat rebuild PolygonMasks, and can share the arrays
        array = np.asarray(polygon).astype(np.float64, copy=False)
        _check_polygon(array, f"PolygonMasks instance {index}")
        arrays.append(array)
    return arrays


def _polygon_areas(polygons: List[np.ndarray]) -> np.ndarray:
    """Shoelace area of every polygon at once: ndarray[len(polygons)], float64."""
    if not polygons:
        return np.zeros(0)
    points_per_polygon = np.array([len(p) // 2 for p in polygons])
    xy = np.concatenate(polygons).reshape(-1, 2)
    starts = np.cumsum(points_per_polygon) - points_per_polygon
    # each vertex pairs with the previous one of its own polygon, the first with the last
    previous = np.arange(len(xy)) - 1
    previous[starts] = starts + points_per_polygon - 1
    cross = xy[:, 0] * xy[previous, 1] - xy[:, 1] * xy[previous, 0]
    return 0.5 * np.abs(np.add.reduceat(cross, starts))


class ROIMasks:
    """N masks each defined inside its own ROI box, as a tensor (N, M, M) of soft or hard
    values (e.g. Mask R-CNN's per-box predictions). `to_bitmasks` pastes them into the image.

    Attributes:
        tensor (Tensor[N, M, M])
    """

    def __init__(self, tensor: torch.Tensor):
        """
        Args:
            tensor (Tensor[N, M, M]): the mask of each ROI.
        """
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 3:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor)
            raise ValueError(f"ROIMasks must take masks of 3 dimensions (N, M, M), got {shape}")
        self.tensor = tensor

    def to(self, device: Union[str, torch.device]) -> "ROIMasks":
        return ROIMasks(self.tensor.to(device))

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __getitem__(self, item: Union[slice, torch.Tensor]) -> "ROIMasks":
        """Select masks by a slice, a bool mask or an index tensor (an int would drop the
        instance dimension and is rejected). The result may share storage."""
        selected = self.tensor[item]
        if selected.dim() != 3:
            raise ValueError(
                f"Indexing on ROIMasks with {item!r} returns a tensor with shape "
                f"{tuple(selected.shape)}!"
            )
        return ROIMasks(selected)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_instances={len(self.tensor)})"

    def to_bitmasks(
        self, boxes: Union[Boxes, torch.Tensor], height: int, width: int, threshold: float = 0.5
    ) -> BitMasks:
        """Paste mask i into box i of a (height, width) image and threshold it.

        Args:
            boxes (Boxes or Tensor[N, 4]): XYXY_ABS ROI of each mask.
            height, width (int): image size.
            threshold (float): pasted values >= threshold are set, see
                `detzoo.layers.mask_ops.paste_masks_in_image`.

        Returns:
            BitMasks of shape (N, height, width).
        """
        box_tensor = boxes.tensor if isinstance(boxes, Boxes) else boxes
        pasted = paste_masks_in_image(
            self.tensor, box_tensor, (height, width), threshold=threshold
        )
        return BitMasks(pasted)
