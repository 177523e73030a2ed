"""Pasting fixed-size mask predictions (e.g. 28 x 28, one per box) into full-image masks.

Pixel model: image pixel (i, j) covers [j, j + 1) x [i, i + 1) and is sampled at its center
(j + 0.5, i + 0.5); a box's mask covers the box exactly, each mask cell a box-width / Wm by
box-height / Hm rectangle sampled at its center. Values between cell centers are bilinear,
and towards zero outside the mask's outer cell centers (`grid_sample`, align_corners=False,
zero padding). Detectron1's older paste (`paste_mask_in_image_old`) truncates the box to whole
pixels first, so the two differ on a thin band of boundary pixels.

`paste_masks_in_image` is written in the TorchScript subset, so that `_paste_masks_tensor_shape`
can be scripted from inside `torch.jit.trace` and the traced graph keeps the image size as an
input instead of a constant.
"""
import math
from typing import Tuple

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

__all__ = ["paste_masks_in_image"]

BYTES_PER_FLOAT = 4
# Most memory the float masks of one chunk may take on GPU (Detectron2's choice: 1 GiB).
GPU_MEM_LIMIT = 1024**3


def _paste_region(
    boxes: torch.Tensor, mask_h: int, mask_w: int, img_h: int, img_w: int
) -> Tuple[int, int, int, int]:
    """(y0, y1, x0, x1): a window of the image, in whole pixels, outside which every
    pasted mask of the chunk is exactly zero, clipped to the image.

    A mask's bilinear tail reaches half a mask cell beyond its box (towards the zero padding),
    so the window is the boxes' hull grown by half a cell and one pixel. (Detectron2 grows it
    by one pixel only, which drops tail values below 0.5 on CPU; thresholds >= 0.5 agree.)
    """
    half_cell_w = (boxes[:, 2] - boxes[:, 0]) / (2 * mask_w)
    half_cell_h = (boxes[:, 3] - boxes[:, 1]) / (2 * mask_h)
    x0 = min(max(int((boxes[:, 0] - half_cell_w).min().floor()) - 1, 0), img_w)
    y0 = min(max(int((boxes[:, 1] - half_cell_h).min().floor()) - 1, 0), img_h)
    x1 = max(min(int((boxes[:, 2] + half_cell_w).max().ceil()) + 1, img_w), x0)
    y1 = max(min(int((boxes[:, 3] + half_cell_h).max().ceil()) + 1, img_h), y0)
    return y0, y1, x0, x1


def _do_paste_mask(
    masks: torch.Tensor, boxes: torch.Tensor, img_h: int, img_w: int, skip_empty: bool = True
) -> Tuple[torch.Tensor, Tuple[int, int, int, int]]:
    """Sample masks at the image pixels of their boxes.

    Args:
        masks (Tensor[N, 1, Hm, Wm]): soft masks, each spanning its box.
        boxes (Tensor[N, 4]): XYXY_ABS.
        img_h, img_w (int): image size.
        skip_empty (bool): compute only the window of the image where some mask can be
            nonzero (worth it on CPU); else the whole image.

    Returns:
        Tensor[N, h, w] of floats, and the window (y0, y1, x0, x1) it covers, such that
        the result belongs at image[y0:y1, x0:x1].
    """
    if skip_empty and not torch.jit.is_scripting():
        y0_int, y1_int, x0_int, x1_int = _paste_region(
            boxes, masks.shape[2], masks.shape[3], img_h, img_w
        )
    else:
        y0_int, y1_int, x0_int, x1_int = 0, img_h, 0, img_w
    boxes = boxes.float()
    x0, y0, x1, y1 = boxes[:, 0:1], boxes[:, 1:2], boxes[:, 2:3], boxes[:, 3:4]
    num = masks.shape[0]

    # Pixel centers in the box's normalized frame: -1 at the box's left/top edge, +1 at its
    # right/bottom edge, which is what grid_sample(align_corners=False) expects.
    xs = torch.arange(x0_int, x1_int, device=boxes.device, dtype=torch.float32) + 0.5
    ys = torch.arange(y0_int, y1_int, device=boxes.device, dtype=torch.float32) + 0.5
    grid_x = (xs - x0) / (x1 - x0) * 2 - 1  # (N, w)
    grid_y = (ys - y0) / (y1 - y0) * 2 - 1  # (N, h)
    height, width = grid_y.shape[1], grid_x.shape[1]
    grid = torch.stack(
        [grid_x[:, None, :].expand(num, height, width), grid_y[:, :, None].expand(num, height, width)],
        dim=3,
    )
    if masks.dtype != torch.float64:
        # Integer, bool and half masks are sampled in float32: half precision cannot place
        # the grid of a large image to a fraction of a pixel.
        masks = masks.float()
    pasted = F.grid_sample(masks, grid.to(masks.dtype), align_corners=False)
    return pasted[:, 0], (y0_int, y1_int, x0_int, x1_int)


def _check_paste_inputs(masks, boxes, image_shape):
    if masks.dim() != 3:
        raise ValueError(
            f"paste_masks_in_image: masks must be (N, Hm, Wm), got shape {tuple(masks.shape)}"
        )
    if boxes.dim() != 2 or boxes.shape[1] != 4 or boxes.shape[0] != masks.shape[0]:
        raise ValueError(
            f"paste_masks_in_image: boxes must be (N, 4) with N = {masks.shape[0]} (one box "
            f"per mask), got shape {tuple(boxes.shape)}"
        )
    if len(image_shape) != 2:
        raise ValueError(f"paste_masks_in_image: image_shape must be (height, width), got {image_shape}")


def _num_chunks(num_masks: int, img_h: int, img_w: int, on_cpu: bool) -> int:
    if on_cpu or torch.jit.is_scripting():
        # One box at a time, each computing only its own window: the fewest operations.
        # (TorchScript cannot read the module's memory limit, so scripts do the same.)
        return num_masks
    # On GPU, large chunks run in parallel; bound the memory of one chunk's float masks.
    # A single mask larger than the limit still gets its own chunk (it cannot be split).
    wanted = int(math.ceil(num_masks * img_h * img_w * BYTES_PER_FLOAT / GPU_MEM_LIMIT))
    return min(max(wanted, 1), num_masks)


def paste_masks_in_image(
    masks: torch.Tensor, boxes: torch.Tensor, image_shape: Tuple[int, int], threshold: float = 0.5
) -> torch.Tensor:
    """Paste each mask into its box of an image-sized canvas.

    Each mask is resized onto its box by bilinear sampling at the image's pixel centers (see
    the module docstring for the pixel model); pixels outside the box get (nearly) 0.

    Args:
        masks (Tensor[N, Hm, Wm]): soft masks with values in [0, 1], mask i spanning box i.
        boxes (Tensor[N, 4] or Boxes): XYXY_ABS; anything with a `.tensor` attribute holding
            such a tensor (detzoo.structures.Boxes) is accepted.
        image_shape (tuple[int, int]): (height, width) of the image.
        threshold (float): pixels with a value >= threshold are set. A negative threshold
            keeps the soft values instead, as uint8 (value * 255, truncated), for inspection.

    Returns:
        Tensor[N, height, width], bool if threshold >= 0, else uint8; on boxes' device.
    """
    if not torch.jit.is_scripting():
        if not isinstance(boxes, torch.Tensor):
            boxes = boxes.tensor
        _check_paste_inputs(masks, boxes, image_shape)
    img_h, img_w = int(image_shape[0]), int(image_shape[1])
    num_masks = masks.shape[0]
    out_dtype = torch.bool if threshold >= 0 else torch.uint8
    img_masks = torch.zeros((num_masks, img_h, img_w), dtype=out_dtype, device=boxes.device)
    if num_masks == 0:
        return img_masks

    on_cpu = boxes.device.type == "cpu"
    num_chunks = _num_chunks(num_masks, img_h, img_w, on_cpu)
    chunk_size = int(math.ceil(num_masks / num_chunks))
    masks = masks.to(boxes.device)
    for start in range(0, num_masks, chunk_size):
        end = min(start + chunk_size, num_masks)
        pasted, (y0, y1, x0, x1) = _do_paste_mask(
            masks[start:end, None, :, :], boxes[start:end], img_h, img_w, skip_empty=on_cpu
        )
        if threshold >= 0:
            img_masks[start:end, y0:y1, x0:x1] = pasted >= threshold
        else:
            img_masks[start:end, y0:y1, x0:x1] = (pasted * 255).to(dtype=torch.uint8)
    return img_masks


@torch.jit.script_if_tracing
def _paste_masks_tensor_shape(
    masks: torch.Tensor,
    boxes: torch.Tensor,
    image_shape: Tuple[torch.Tensor, torch.Tensor],
    threshold: float = 0.5,
) -> torch.Tensor:
    """`paste_masks_in_image` with the image size given as two 0-d tensors (as shapes are
    while tracing). Scripted when traced, so the tensor -> int conversion happens at run time."""
    return paste_masks_in_image(masks, boxes, (int(image_shape[0]), int(image_shape[1])), threshold)


def paste_mask_in_image_old(
    mask: torch.Tensor, box: torch.Tensor, img_h: int, img_w: int, threshold: float
) -> torch.Tensor:
    """Detectron1's paste of one mask, kept as a reference; larger quantization error than
    `paste_masks_in_image`, because the box is truncated to whole pixels first.

    The box's corners are cast to int, so it covers the pixels x0..x1 and y0..y1 inclusive
    (x1 - x0 + 1 columns); the mask is resized to that many pixels with PIL's bilinear filter.
    Its boundary cells are not tapered to zero: callers usually pad the mask by one cell of
    zeros first (`pad_masks`, `scale_boxes`).

    Args:
        mask (Tensor[Hm, Wm]): one soft mask, values in [0, 1].
        box (Tensor[4]): XYXY_ABS.
        img_h, img_w (int): image size.
        threshold (float): pixels with a value > threshold are 1. A negative threshold keeps the
            soft values as uint8 (value * 255).

    Returns:
        Tensor[img_h, img_w] of uint8, on CPU.
    """
    x0, y0, x1, y1 = (int(v) for v in box.to(dtype=torch.int32).tolist())
    samples_w, samples_h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
    resized = Image.fromarray(mask.detach().cpu().float().numpy())
    resized = np.asarray(resized.resize((samples_w, samples_h), resample=Image.BILINEAR))
    if threshold >= 0:
        resized = torch.from_numpy((resized > threshold).astype(np.uint8))
    else:
        resized = torch.from_numpy(resized * 255).to(torch.uint8)

    im_mask = torch.zeros((img_h, img_w), dtype=torch.uint8)
    cx0, cx1 = max(x0, 0), min(x1 + 1, img_w)
    cy0, cy1 = max(y0, 0), min(y1 + 1, img_h)
    if cx1 > cx0 and cy1 > cy0:
        im_mask[cy0:cy1, cx0:cx1] = resized[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    return im_mask


def pad_masks(masks: torch.Tensor, padding: int):
    """Surround (B, M, M) masks with `padding` cells of zeros on every side.

    Returns:
        the (B, M + 2 * padding, M + 2 * padding) masks, and the scale (M + 2 * padding) / M
        by which their boxes must grow (`scale_boxes`) to keep the original cells in place.
    """
    size = masks.shape[-1]
    padded = F.pad(masks, (padding, padding, padding, padding))
    return padded, float(size + 2 * padding) / size


def scale_boxes(boxes: torch.Tensor, scale: float) -> torch.Tensor:
    """Scale XYXY boxes (B, 4) by `scale` about their centers."""
    center = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    half_size = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale
    return torch.cat([center - half_size, center + half_size], dim=1)
