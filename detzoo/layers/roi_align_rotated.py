"""Rotated ROIAlign: ROIAlign over rotated boxes (Detectron2's ROIAlignRotated, for rotated
Faster R-CNN / RRPN), over the compiled `torch.ops.detzoo.roi_align_rotated`, with autograd
(double backward included) and a fake kernel for `torch.compile` / `torch.export`.
"""
import torch
from torch import nn

from detzoo import _ext

from .roi_align import _check_features, _check_rois, _pooled_size

__all__ = ["ROIAlignRotated", "roi_align_rotated"]

_ROTATED_LAYOUT = "[image index, x_center, y_center, width, height, angle_degrees]"


def roi_align_rotated(
    input: torch.Tensor, rois: torch.Tensor, output_size, spatial_scale: float, sampling_ratio: int
) -> torch.Tensor:
    """Pools a (C, h, w) feature from `input` for every rotated box.

    Each bin's samples are laid out on the box's own axes and rotated about its centre; sample
    coordinates take the half-pixel shift (there is no legacy, unaligned mode).

    Args:
        input (Tensor[N, C, H, W]): feature maps, float/double/half/bfloat16.
        rois (Tensor[R, 6]): rows [image index, x_center, y_center, width, height, angle]
            (XYWHA_ABS in input-image coordinates, angle in degrees counter-clockwise), with
            the dtype and device of `input`. Widths and heights must be non-negative.
        output_size (int or (h, w)): the pooled size.
        spatial_scale (float): maps box coordinates onto `input`.
        sampling_ratio (int): samples per bin along each box axis; 0 or less samples adaptively,
            ceil(box size / output size) per axis.

    Returns:
        Tensor[R, C, h, w], the dtype of `input`.
    """
    _check_features(input)
    _check_rois(rois, input, 6, _ROTATED_LAYOUT)
    pooled_height, pooled_width = _pooled_size(output_size)
    return _ext.load().roi_align_rotated(
        input, rois, float(spatial_scale), pooled_height, pooled_width, int(sampling_ratio)
    )


class ROIAlignRotated(nn.Module):
    """Detectron2's ROIAlignRotated module.

    Args:
        output_size (int or (h, w)): the pooled size.
        spatial_scale (float): maps box coordinates onto the input feature map.
        sampling_ratio (int): samples per bin along each box axis; 0 samples adaptively.
    """

    def __init__(self, output_size, spatial_scale, sampling_ratio):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio

    def forward(self, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input (Tensor[N, C, H, W]): feature maps.
            rois (Tensor[R, 6]): rows [image index, x_center, y_center, width, height,
                angle_degrees] (XYWHA_ABS in input-image coordinates).

        Returns:
            Tensor[R, C, h, w], the dtype of `input`. Half and bfloat16 inputs are pooled in
            float32 (box coordinates included, as Detectron2 does) and the result cast back.
        """
        _check_features(input)
        if not isinstance(rois, torch.Tensor) or rois.dim() != 2 or rois.shape[1] != 6:
            shape = tuple(rois.shape) if isinstance(rois, torch.Tensor) else type(rois).__name__
            raise ValueError(f"rois must have shape (R, 6) with rows {_ROTATED_LAYOUT}, got {shape}")
        compute_dtype = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
        output = roi_align_rotated(
            input.to(compute_dtype),
            rois.to(compute_dtype),
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
        )
        return output.to(input.dtype)

    def __repr__(self):
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio})"
        )


# Autograd and fake (meta) kernels, registered once detzoo._C is loaded.


def _roi_align_rotated_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio):
    torch._check(rois.dim() == 2 and rois.shape[1] == 6, lambda: "roi_align_rotated: rois must have shape (R, 6)")
    torch._check(input.dtype == rois.dtype, lambda: "roi_align_rotated: rois must have the dtype of input")
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


def _roi_align_rotated_backward_fake(
    grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width, sampling_ratio
):
    torch._check(grad.dtype == rois.dtype, lambda: "_roi_align_rotated_backward: rois must have the dtype of grad")
    return grad.new_empty((batch_size, channels, height, width))


def _roi_align_rotated_setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio = inputs
    ctx.save_for_backward(rois)
    ctx.input_shape = tuple(input.shape)
    ctx.pool_args = (spatial_scale, pooled_height, pooled_width)
    ctx.sampling_ratio = sampling_ratio


def _roi_align_rotated_grad(ctx, grad_output):
    (rois,) = ctx.saved_tensors
    grad_input = torch.ops.detzoo._roi_align_rotated_backward(
        grad_output, rois, *ctx.pool_args, *ctx.input_shape, ctx.sampling_ratio
    )
    return grad_input, None, None, None, None, None


def _roi_align_rotated_backward_setup_context(ctx, inputs, output):
    grad, rois, spatial_scale, pooled_height, pooled_width = inputs[:5]
    ctx.save_for_backward(rois)
    ctx.pool_args = (spatial_scale, pooled_height, pooled_width, inputs[9])


def _roi_align_rotated_backward_grad(ctx, grad_grad_input):
    # The backward op is linear in `grad`; its own gradient is the forward op.
    (rois,) = ctx.saved_tensors
    grad_grad = torch.ops.detzoo.roi_align_rotated(grad_grad_input, rois, *ctx.pool_args)
    return (grad_grad,) + (None,) * 9


@_ext.on_load
def _register_roi_align_rotated():
    torch.library.register_fake("detzoo::roi_align_rotated")(_roi_align_rotated_fake)
    torch.library.register_fake("detzoo::_roi_align_rotated_backward")(_roi_align_rotated_backward_fake)
    torch.library.register_autograd(
        "detzoo::roi_align_rotated", _roi_align_rotated_grad, setup_context=_roi_align_rotated_setup_context
    )
    torch.library.register_autograd(
        "detzoo::_roi_align_rotated_backward",
        _roi_align_rotated_backward_grad,
        setup_context=_roi_align_rotated_backward_setup_context,
    )
