"""ROIAlign: pools a fixed-size feature for each box by averaging bilinear samples (Mask R-CNN).

`roi_align` has torchvision's signature and defaults (Detectron2 re-exports torchvision's
function); `ROIAlign` is Detectron2's module, whose `aligned` defaults to True. Both run the
compiled `torch.ops.detzoo.roi_align`, which has autograd (double backward included) and a fake
kernel, so it works under `torch.compile` and `torch.export`.
"""
from typing import List, Sequence, Tuple, Union

import torch
from torch import nn
from torch.jit.annotations import BroadcastingList2
from torch.nn.modules.utils import _pair

from detzoo import _ext

__all__ = ["ROIAlign", "roi_align"]


def _check_features(input: torch.Tensor, name: str = "input") -> None:
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(input).__name__}")
    if input.dim() != 4:
        raise ValueError(f"{name} must be a 4-D (N, C, H, W) tensor, got shape {tuple(input.shape)}")
    if not input.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {input.dtype}")


def _check_rois(rois: torch.Tensor, input: torch.Tensor, columns: int, layout: str) -> None:
    """`rois` must be (R, columns), with the dtype and device of `input`."""
    if not isinstance(rois, torch.Tensor):
        raise TypeError(f"rois must be a Tensor, got {type(rois).__name__}")
    if rois.dim() != 2 or rois.shape[1] != columns:
        raise ValueError(f"rois must have shape (R, {columns}) with rows {layout}, got shape {tuple(rois.shape)}")
    if rois.dtype != input.dtype:
        raise ValueError(f"rois must have the dtype of input ({input.dtype}), got {rois.dtype}")
    if rois.device != input.device:
        raise ValueError(f"rois must be on the device of input ({input.device}), got {rois.device}")


def _pooled_size(output_size) -> Tuple[int, int]:
    """`output_size` (int or (h, w)) as two positive ints."""
    size = _pair(output_size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f"output_size must be a positive int or a pair (h, w) of them, got {output_size!r}")
    return size[0], size[1]


def _boxes_to_rois(boxes: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
    """A list of per-image (L_i, 4) XYXY boxes as (sum L_i, 5) rows [image index, x1, y1, x2, y2]."""
    boxes = list(boxes)
    if not boxes:
        raise ValueError("boxes is an empty list; pass one (L, 4) tensor per image")
    for i, b in enumerate(boxes):
        if not isinstance(b, torch.Tensor) or b.dim() != 2 or b.shape[1] != 4:
            shape = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
            raise ValueError(f"boxes[{i}] must be an (L, 4) tensor of XYXY boxes, got {shape}")
    image_index = torch.cat(
        [torch.full((len(b), 1), i, dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)]
    )
    return torch.cat([image_index, torch.cat(boxes)], dim=1)


def roi_align(
    input: torch.Tensor,
    boxes: torch.Tensor,
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> torch.Tensor:
    """Pools a (C, h, w) feature from `input` for every box.

    Args:
        input (Tensor[N, C, H, W]): feature maps, float/double/half/bfloat16.
        boxes (Tensor[R, 5] or list[Tensor[L_i, 4]]): rows [image index, x1, y1, x2, y2]
            (XYXY_ABS in input-image coordinates), or one XYXY_ABS tensor per image. Must have
            the dtype and device of `input`.
        output_size (int or (h, w)): the pooled size.
        spatial_scale (float): maps box coordinates onto `input` (e.g. 1/16 for stride 16).
        sampling_ratio (int): samples per bin along each axis; 0 or less samples adaptively,
            ceil(box size / output size) per axis.
        aligned (bool): shift boxes by -0.5 pixel so that pixel centres are at integer + 0.5
            (Detectron2's ROIAlignV2). False is the legacy rule, which also widens boxes to at
            least one pixel.

    Returns:
        Tensor[R, C, h, w], the dtype of `input`.

    In TorchScript `boxes` must be the (R, 5) tensor, and the inputs are not checked.
    """
    if not torch.jit.is_scripting():
        _check_features(input)
        if not isinstance(boxes, torch.Tensor):
            boxes = _boxes_to_rois(boxes)
        _check_rois(boxes, input, 5, "[image index, x1, y1, x2, y2]")
        output_size = _pooled_size(output_size)
        _ext.load()
    return torch.ops.detzoo.roi_align(
        input, boxes, float(spatial_scale), output_size[0], output_size[1], int(sampling_ratio), bool(aligned)
    )


class ROIAlign(nn.Module):
    """Detectron2's ROIAlign module (note: `aligned` defaults to True, unlike torchvision's).

    Args:
        output_size (int or (h, w)): the pooled size.
        spatial_scale (float): maps box coordinates onto the input feature map.
        sampling_ratio (int): samples per bin along each axis; 0 samples adaptively.
        aligned (bool): sample with the half-pixel shift (see `roi_align`). It is the correct
            pixel model; False reproduces the original Detectron's boxes. Either works when
            convolutions follow the pooling.
    """

    def __init__(self, output_size, spatial_scale, sampling_ratio, aligned=True):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input (Tensor[N, C, H, W]): feature maps.
            rois (Tensor[R, 5]): rows [image index, x1, y1, x2, y2], XYXY_ABS in input-image
                coordinates; cast to the dtype of `input`, as Detectron2 does.

        Returns:
            Tensor[R, C, h, w].
        """
        if not torch.jit.is_scripting():
            _check_features(input)
            if not isinstance(rois, torch.Tensor) or rois.dim() != 2 or rois.shape[1] != 5:
                shape = tuple(rois.shape) if isinstance(rois, torch.Tensor) else type(rois).__name__
                raise ValueError(f"rois must have shape (R, 5) with rows [image index, x1, y1, x2, y2], got {shape}")
        return roi_align(
            input,
            rois.to(dtype=input.dtype),
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            self.aligned,
        )

    def __repr__(self):
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned})"
        )


# Autograd and fake (meta) kernels, registered once detzoo._C is loaded.


def _roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    torch._check(rois.dim() == 2 and rois.shape[1] == 5, lambda: "roi_align: rois must have shape (R, 5)")
    torch._check(input.dtype == rois.dtype, lambda: "roi_align: rois must have the dtype of input")
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


def _roi_align_backward_fake(
    grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width, sampling_ratio, aligned
):
    torch._check(grad.dtype == rois.dtype, lambda: "_roi_align_backward: rois must have the dtype of grad")
    return grad.new_empty((batch_size, channels, height, width))


def _roi_align_setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.input_shape = tuple(input.shape)
    ctx.pool_args = (spatial_scale, pooled_height, pooled_width)
    ctx.sampling = (sampling_ratio, aligned)


def _roi_align_grad(ctx, grad_output):
    (rois,) = ctx.saved_tensors
    grad_input = torch.ops.detzoo._roi_align_backward(
        grad_output, rois, *ctx.pool_args, *ctx.input_shape, *ctx.sampling
    )
    return grad_input, None, None, None, None, None, None


def _roi_align_backward_setup_context(ctx, inputs, output):
    grad, rois, spatial_scale, pooled_height, pooled_width = inputs[:5]
    sampling_ratio, aligned = inputs[9:]
    ctx.save_for_backward(rois)
    ctx.pool_args = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)


def _roi_align_backward_grad(ctx, grad_grad_input):
    # The backward op is linear in `grad`; its own gradient is the forward op.
    (rois,) = ctx.saved_tensors
    grad_grad = torch.ops.detzoo.roi_align(grad_grad_input, rois, *ctx.pool_args)
    return (grad_grad,) + (None,) * 10


@_ext.on_load
def _register_roi_align():
    torch.library.register_fake("detzoo::roi_align")(_roi_align_fake)
    torch.library.register_fake("detzoo::_roi_align_backward")(_roi_align_backward_fake)
    torch.library.register_autograd(
        "detzoo::roi_align", _roi_align_grad, setup_context=_roi_align_setup_context
    )
    torch.library.register_autograd(
        "detzoo::_roi_align_backward", _roi_align_backward_grad, setup_context=_roi_align_backward_setup_context
    )
