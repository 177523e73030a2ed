"""Deformable convolution: v1 (`DeformConv`, Dai et al. 2017) and v2, modulated
(`ModulatedDeformConv`, Zhu et al. 2019), with Detectron2's modules and functions.

Each kernel tap samples the input at its regular position plus a learned (dy, dx) offset, by
bilinear interpolation with zeros outside the image; v2 also multiplies each sample by a learned
mask. The maths is torchvision.ops.deform_conv2d's:

    offset (Tensor[N, 2 * deformable_groups * kh * kw, H_out, W_out]): for offset group g and
        tap k = i * kw + j, channel 2 * (g * kh * kw + k) holds dy and the next one dx.
    mask (Tensor[N, deformable_groups * kh * kw, H_out, W_out]): channel g * kh * kw + k.

Input channel c belongs to offset group c // (C / deformable_groups). Unlike Detectron2 (CUDA
only, and v1 only through torchvision on CPU), both variants run on CPU and CUDA, forward and
backward, through the compiled op `torch.ops.detzoo.deform_conv`, which has autograd and a fake
kernel (so it works under `torch.compile` and `torch.export`).
"""
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from detzoo import _ext

__all__ = ["DeformConv", "ModulatedDeformConv", "deform_conv", "modulated_deform_conv"]


def _int_pair(value, name: str, minimum: int) -> Tuple[int, int]:
    """`value` (int or pair of ints, each >= minimum) as a pair."""
    pair = _pair(value)
    valid = len(pair) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in pair)
    if not valid:
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {value!r}")
    return pair[0], pair[1]


def _positive_int(value, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_channels(in_channels: int, out_channels: int, groups: int, deformable_groups: int) -> None:
    """Channel counts must split evenly into the convolution and offset groups."""
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"in_channels ({in_channels}) and out_channels ({out_channels}) must both be divisible by "
            f"groups ({groups})"
        )
    if in_channels % deformable_groups:
        raise ValueError(
            f"in_channels ({in_channels}) must be divisible by deformable_groups ({deformable_groups})"
        )


def _check_tensor(tensor, name: str, input: torch.Tensor, shape: Tuple[int, ...], layout: str) -> None:
    """`tensor` must be a tensor of `shape` (described by `layout`) with input's dtype and device."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(tensor).__name__}")
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name} must have shape {layout} = {shape}, got {tuple(tensor.shape)}")
    if tensor.dtype != input.dtype:
        raise ValueError(f"{name} must have the dtype of input ({input.dtype}), got {tensor.dtype}")
    if tensor.device != input.device:
        raise ValueError(f"{name} must be on the device of input ({input.device}), got {tensor.device}")


def _output_size(input_size, kernel_size, stride, padding, dilation) -> Tuple[int, int]:
    return tuple(
        (size + 2 * pad - (dil * (k - 1) + 1)) // s + 1
        for size, k, s, pad, dil in zip(input_size, kernel_size, stride, padding, dilation)
    )


def _check_input_and_weight(input, weight, groups: int, deformable_groups: int) -> None:
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
    if input.dim() != 4:
        raise ValueError(f"input must be a 4-D (N, C, H, W) tensor, got shape {tuple(input.shape)}")
    if not input.is_floating_point():
        raise ValueError(f"input must be a floating-point tensor, got dtype {input.dtype}")
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a Tensor, got {type(weight).__name__}")
    channels = input.shape[1]
    if weight.dim() != 4 or weight.shape[1] * groups != channels or weight.shape[0] % groups:
        raise ValueError(
            f"weight must have shape (C_out, C / groups, kh, kw) = (C_out, {channels // groups}, kh, kw) with "
            f"C_out divisible by groups = {groups}, got {tuple(weight.shape)}"
        )
    _check_tensor(weight, "weight", input, tuple(weight.shape), "(C_out, C / groups, kh, kw)")
    if channels % deformable_groups:
        raise ValueError(f"input channels ({channels}) must be divisible by deformable_groups ({deformable_groups})")


def _deform_conv(input, offset, mask, weight, bias, stride, padding, dilation, groups, deformable_groups):
    """Validates the arguments of either variant (mask None: v1) and runs the op."""
    stride = _int_pair(stride, "stride", 1)
    padding = _int_pair(padding, "padding", 0)
    dilation = _int_pair(dilation, "dilation", 1)
    groups = _positive_int(groups, "groups")
    deformable_groups = _positive_int(deformable_groups, "deformable_groups")
    _check_input_and_weight(input, weight, groups, deformable_groups)
    kernel_size = tuple(weight.shape[2:])
    out_size = _output_size(input.shape[2:], kernel_size, stride, padding, dilation)
    if min(out_size) < 1:
        raise ValueError(
            f"input of spatial size {tuple(input.shape[2:])} is too small for kernel {kernel_size}, stride "
            f"{stride}, padding {padding} and dilation {dilation} (the output would be {out_size})"
        )
    taps = kernel_size[0] * kernel_size[1]
    batch = input.shape[0]
    _check_tensor(
        offset, "offset", input, (batch, 2 * deformable_groups * taps, *out_size),
        "(N, 2 * deformable_groups * kh * kw, H_out, W_out)",
    )
    if mask is not None:
        _check_tensor(
            mask, "mask", input, (batch, deformable_groups * taps, *out_size),
            "(N, deformable_groups * kh * kw, H_out, W_out)",
        )
    if bias is not None:
        _check_tensor(bias, "bias", input, (weight.shape[0],), "(C_out,)")
    nothing = input.new_empty(0)
    return _ext.load().deform_conv(
        input, weight, offset, nothing if mask is None else mask, nothing if bias is None else bias,
        *stride, *padding, *dilation, groups, deformable_groups, mask is not None,
    )


def deform_conv(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    deformable_groups: int = 1,
    im2col_step: int = 64,
) -> torch.Tensor:
    """Deformable convolution v1 (no bias), Detectron2's `deform_conv`.

    Args:
        input (Tensor[N, C, H, W]): float, double, half or bfloat16; N may be 0.
        offset (Tensor[N, 2 * deformable_groups * kh * kw, H_out, W_out]): (dy, dx) per tap, in
            input pixels, laid out as the module docstring says.
        weight (Tensor[C_out, C / groups, kh, kw])
        stride, padding, dilation (int or (int, int))
        groups (int): convolution groups.
        deformable_groups (int): input channels are split into this many groups, each with its
            own offsets.
        im2col_step (int): accepted for compatibility and ignored; images are processed in
            chunks sized by a memory budget instead.

    Returns:
        Tensor[N, C_out, H_out, W_out], with H_out = (H + 2 * pad_h - dil_h * (kh - 1) - 1) //
        stride_h + 1 (and likewise W_out).
    """
    return _deform_conv(input, offset, None, weight, None, stride, padding, dilation, groups, deformable_groups)


def modulated_deform_conv(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    deformable_groups: int = 1,
) -> torch.Tensor:
    """Modulated deformable convolution (v2), Detectron2's `modulated_deform_conv`.

    Args: those of `deform_conv`, plus
        mask (Tensor[N, deformable_groups * kh * kw, H_out, W_out]): multiplies each sample
            (usually a sigmoid output, in [0, 1]).
        bias (Tensor[C_out], optional)

    Returns:
        Tensor[N, C_out, H_out, W_out]
    """
    return _deform_conv(input, offset, mask, weight, bias, stride, padding, dilation, groups, deformable_groups)


def _norm_and_activation(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # Like Detectron2, an empty output skips them (some norms reject empty batches).
    if x.numel() == 0:
        return x
    if module.norm is not None:
        x = module.norm(x)
    if module.activation is not None:
        x = module.activation(x)
    return x


class DeformConv(nn.Module):
    """Deformable convolution v1 (Dai et al., "Deformable Convolutional Networks").

    Args: those of `torch.nn.Conv2d` (bias must stay False, as in Detectron2), plus
        deformable_groups (int): number of offset groups.
        norm (nn.Module, optional): applied to the output, child module `norm`.
        activation (callable, optional): Tensor -> Tensor, applied after `norm`.

    forward(x: Tensor[N, C_in, H, W], offset: Tensor[N, 2 * deformable_groups * kh * kw, H_out,
    W_out]) -> Tensor[N, C_out, H_out, W_out]. State dict: `weight` (and `norm.*`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        deformable_groups: int = 1,
        bias: bool = False,
        norm: Optional[nn.Module] = None,
        activation=None,
    ):
        super().__init__()
        if bias:
            raise ValueError(
                "DeformConv has no bias (as in Detectron2); use ModulatedDeformConv(..., bias=True) or a norm"
            )
        _check_channels(in_channels, out_channels, groups, deformable_groups)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.norm = norm
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.register_parameter("bias", None)
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        x = deform_conv(
            x, offset, self.weight, self.stride, self.padding, self.dilation, self.groups, self.deformable_groups
        )
        return _norm_and_activation(self, x)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"deformable_groups={self.deformable_groups}, bias=False"
        )


class ModulatedDeformConv(nn.Module):
    """Modulated deformable convolution (Zhu et al., "Deformable ConvNets v2").

    Args: those of `DeformConv`, with `bias` (default True) allowed. `stride`, `padding` and
    `dilation` are kept as given, like Detectron2 (which expects ints here).

    forward(x: Tensor[N, C_in, H, W], offset: Tensor[N, 2 * deformable_groups * kh * kw, H_out,
    W_out], mask: Tensor[N, deformable_groups * kh * kw, H_out, W_out]) -> Tensor[N, C_out,
    H_out, W_out]. State dict: `weight`, `bias` (and `norm.*`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        deformable_groups: int = 1,
        bias: bool = True,
        norm: Optional[nn.Module] = None,
        activation=None,
    ):
        super().__init__()
        _check_channels(in_channels, out_channels, groups, deformable_groups)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.with_bias = bias
        self.norm = norm
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = modulated_deform_conv(
            x, offset, mask, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
            self.deformable_groups,
        )
        return _norm_and_activation(self, x)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"deformable_groups={self.deformable_groups}, bias={self.with_bias}"
        )


# Autograd and fake (meta) kernels, registered once detzoo._C is loaded.


def _deform_conv_fake(
    input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups,
    offset_groups, use_mask,
):
    torch._check(input.dim() == 4 and weight.dim() == 4, lambda: "deform_conv: input and weight must be 4-D")
    torch._check(input.dtype == weight.dtype, lambda: "deform_conv: weight must have the dtype of input")
    out_h, out_w = _output_size(
        input.shape[2:], weight.shape[2:], (stride_h, stride_w), (pad_h, pad_w), (dilation_h, dilation_w)
    )
    return input.new_empty((input.shape[0], weight.shape[0], out_h, out_w))


def _deform_conv_backward_fake(grad, input, weight, offset, mask, bias, *params):
    return tuple(t.new_empty(t.shape) for t in (input, weight, offset, mask, bias))


def _deform_conv_setup_context(ctx, inputs, output):
    input, weight, offset, mask, bias = inputs[:5]
    ctx.save_for_backward(input, weight, offset, mask, bias)
    ctx.params = inputs[5:]


def _deform_conv_grad(ctx, grad_output):
    input, weight, offset, mask, bias = ctx.saved_tensors
    use_mask = ctx.params[-1]
    grad_input, grad_weight, grad_offset, grad_mask, grad_bias = torch.ops.detzoo._deform_conv_backward(
        grad_output, input, weight, offset, mask, bias, *ctx.params
    )
    return (
        grad_input,
        grad_weight,
        grad_offset,
        grad_mask if use_mask else None,
        grad_bias if bias.numel() > 0 else None,
    ) + (None,) * len(ctx.params)


@_ext.on_load
def _register_deform_conv():
    torch.library.register_fake("detzoo::deform_conv")(_deform_conv_fake)
    torch.library.register_fake("detzoo::_deform_conv_backward")(_deform_conv_backward_fake)
    torch.library.register_autograd(
        "detzoo::deform_conv", _deform_conv_grad, setup_context=_deform_conv_setup_context
    )
