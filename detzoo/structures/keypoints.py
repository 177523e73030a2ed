"""Keypoint annotations (`Keypoints`) and the two conversions of Mask R-CNN's keypoint head:
points -> one-hot heatmap targets (`Keypoints.to_heatmap`) and heatmaps -> points
(`heatmaps_to_keypoints`).

Both conversions use Heckbert's pixel convention ("What is the coordinate of a pixel?", 1990):
discrete cell d covers continuous [d, d + 1) and its center is c = d + 0.5.
"""
from typing import Any, List, Tuple, Union

import numpy as np
import torch
from torch.nn import functional as F


class Keypoints:
    """Keypoints of N instances, K per instance, as a float32 tensor (N, K, 3).

    Each keypoint is (x, y, v) in image pixels with COCO's visibility flag v: 0 not labeled
    (then x = y = 0), 1 labeled but not visible, 2 labeled and visible.

    Attributes:
        tensor (Tensor[N, K, 3]): float32.
    """

    def __init__(self, keypoints: Union[torch.Tensor, np.ndarray, List[List[List[float]]]]):
        """
        Args:
            keypoints (Tensor, ndarray or nested list): shape (N, K, 3).
        """
        device = keypoints.device if isinstance(keypoints, torch.Tensor) else torch.device("cpu")
        keypoints = torch.as_tensor(keypoints, dtype=torch.float32, device=device)
        if keypoints.dim() != 3 or keypoints.shape[2] != 3:
            raise ValueError(f"Keypoints expects shape (N, K, 3), got {tuple(keypoints.shape)}")
        self.tensor = keypoints

    def __len__(self) -> int:
        return self.tensor.size(0)

    def to(self, *args: Any, **kwargs: Any) -> "Keypoints":
        """Same keypoints with the tensor moved/cast by `Tensor.to(*args, **kwargs)`."""
        return type(self)(self.tensor.to(*args, **kwargs))

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def to_heatmap(
        self, boxes: torch.Tensor, heatmap_size: int
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """One-hot heatmap targets of Mask R-CNN's keypoint head.

        Args:
            boxes (Tensor[N, 4]): XYXY_ABS box of each instance, the region the heatmap covers.
            heatmap_size (int): side S of the square heatmap.

        Returns:
            heatmaps (LongTensor[N, K]): flat index y * S + x of the keypoint's heatmap cell,
                0 where not valid.
            valid (LongTensor[N, K]): 1 where the keypoint is labeled (v > 0) and inside its box.
        """
        return _keypoints_to_heatmap(self.tensor, boxes, heatmap_size)

    def __getitem__(self, item: Union[int, slice, torch.Tensor]) -> "Keypoints":
        """Select instances: `kpts[3]` (one instance, still (1, K, 3)), `kpts[2:10]`,
        `kpts[bool_mask]`, `kpts[index_tensor]`. The result may share storage."""
        if isinstance(item, int):
            return type(self)(self.tensor[item].unsqueeze(0))
        return type(self)(self.tensor[item])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_instances={len(self.tensor)})"

    @staticmethod
    def cat(keypoints_list: List["Keypoints"]) -> "Keypoints":
        """Concatenate along the instance dimension (a new tensor)."""
        if not isinstance(keypoints_list, (list, tuple)) or len(keypoints_list) == 0:
            raise ValueError("Keypoints.cat needs a non-empty list or tuple of Keypoints")
        for i, kpts in enumerate(keypoints_list):
            if not isinstance(kpts, Keypoints):
                raise TypeError(f"Keypoints.cat: element {i} is a {type(kpts).__name__}")
        return type(keypoints_list[0])(torch.cat([k.tensor for k in keypoints_list], dim=0))


def _keypoints_to_heatmap(
    keypoints: torch.Tensor, rois: torch.Tensor, heatmap_size: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Map keypoints to heatmap cells of their ROI.

    The half-open box [x0, x1) is split into S equal cells: x goes to floor((x - x0) * S /
    (x1 - x0)). A keypoint exactly on the right (bottom) edge goes to the last cell rather
    than falling outside.

    Args:
        keypoints (Tensor[N, K, 3]): (x, y, v).
        rois (Tensor[N, 4]): XYXY_ABS.
        heatmap_size (int): S.

    Returns:
        heatmaps, valid (LongTensor[N, K]): see `Keypoints.to_heatmap`. Empty ROIs give two
        empty LongTensors.
    """
    if rois.numel() == 0:
        return rois.new().long(), rois.new().long()
    if rois.dim() != 2 or rois.shape[1] != 4 or len(rois) != len(keypoints):
        raise ValueError(
            f"Keypoints.to_heatmap: boxes must have shape ({len(keypoints)}, 4), got "
            f"{tuple(rois.shape)}"
        )
    x0, y0 = rois[:, 0:1], rois[:, 1:2]
    scale_x = heatmap_size / (rois[:, 2:3] - x0)
    scale_y = heatmap_size / (rois[:, 3:4] - y0)

    x, y = keypoints[..., 0], keypoints[..., 1]
    x_cell = ((x - x0) * scale_x).floor().long()
    y_cell = ((y - y0) * scale_y).floor().long()
    last = heatmap_size - 1
    x_cell = torch.where(x == rois[:, 2:3], last, x_cell)
    y_cell = torch.where(y == rois[:, 3:4], last, y_cell)

    inside = (x_cell >= 0) & (y_cell >= 0) & (x_cell < heatmap_size) & (y_cell < heatmap_size)
    valid = (inside & (keypoints[..., 2] > 0)).long()
    heatmaps = (y_cell * heatmap_size + x_cell) * valid
    return heatmaps, valid


def heatmaps_to_keypoints(maps: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """Read keypoint positions and scores off predicted heatmaps (no gradient).

    Each ROI's K maps are resized (bicubic) to ceil(h) x ceil(w) of its box, with h and w
    clamped to at least 1 pixel, and each map's argmax cell center (d + 0.5) is mapped back
    into the box. The score is the spatial softmax probability of that cell, normalized
    over the S_h x S_w cells of the original map so scores of large and small boxes compare.

    Args:
        maps (Tensor[R, K, S_h, S_w]): heatmap logits per ROI and keypoint.
        rois (Tensor[R, 4]): XYXY_ABS boxes of the ROIs.

    Returns:
        Tensor[R, K, 4]: (x, y, logit, score) per keypoint, in image pixels.
    """
    maps = maps.detach()
    rois = rois.detach()
    num_rois = maps.shape[0]
    if not torch.jit.is_scripting() and rois.shape != (num_rois, 4):
        raise ValueError(
            f"heatmaps_to_keypoints: rois must have shape ({num_rois}, 4) to match maps "
            f"{tuple(maps.shape)}, got {tuple(rois.shape)}"
        )
    widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    widths_ceil, heights_ceil = widths.ceil(), heights.ceil()

    max_logit, flat_pos = _upsampled_argmax(maps, heights_ceil, widths_ceil)
    x_int = flat_pos % widths_ceil.long()[:, None]
    y_int = flat_pos // widths_ceil.long()[:, None]

    # The upsampled map only marks where the peak is; coordinates shrink back from the
    # ceil'd size to the true box size.
    x = (x_int.float() + 0.5) * (widths / widths_ceil)[:, None] + rois[:, 0:1]
    y = (y_int.float() + 0.5) * (heights / heights_ceil)[:, None] + rois[:, 1:2]
    # softmax value at the peak: exp(peak - peak) / sum over the original cells
    pool_sum = (maps - max_logit[:, :, None, None]).exp().sum(dim=(2, 3))
    score = 1.0 / pool_sum
    return torch.stack([x, y, max_logit, score], dim=2).to(maps.dtype)


def _upsampled_argmax(
    maps: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Max value and flat argmax of each map after bicubic resizing to its ROI's size.

    ROIs whose (ceil'd) sizes are equal are resized in one call; other sizes need separate
    calls since the output shapes differ.

    Returns:
        max_logit (Tensor[R, K]), flat_pos (LongTensor[R, K]): index y * width + x.
    """
    num_rois, num_keypoints = maps.shape[0], maps.shape[1]
    max_logit = maps.new_zeros((num_rois, num_keypoints))
    flat_pos = torch.zeros((num_rois, num_keypoints), dtype=torch.long, device=maps.device)
    if num_rois == 0:
        return max_logit, flat_pos
    sizes = torch.stack([heights, widths], dim=1).long()
    unique_sizes, group_of_roi = torch.unique(sizes, dim=0, return_inverse=True)
    size_list: List[List[int]] = unique_sizes.tolist()  # typed for TorchScript
    for group, size in enumerate(size_list):
        members = (group_of_roi == group).nonzero().squeeze(1)
        resized = F.interpolate(
            maps[members], size=(size[0], size[1]), mode="bicubic", align_corners=False
        )
        values, positions = resized.flatten(2).max(dim=2)
        max_logit[members] = values
        flat_pos[members] = positions
    return max_logit, flat_pos
