"""Thin wrappers of torch.nn modules and functions, under Detectron2's names.

Current PyTorch handles empty (zero-batch) tensors in convolutions, norms and interpolation,
so most names here are the torch objects themselves; they stay so that code written for
Detectron2 imports them from the same place. The wrappers that add something are `Conv2d`
(an optional norm and activation that keep Detectron2's state-dict names), `cat` (no copy for
one tensor) and `cross_entropy` (zero instead of NaN for an empty batch).
"""
from typing import List, Optional

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "BatchNorm2d",
    "Conv2d",
    "ConvTranspose2d",
    "Linear",
    "cat",
    "cross_entropy",
    "empty_input_loss_func_wrapper",
    "interpolate",
    "move_device_like",
    "nonzero_tuple",
    "shapes_to_tensor",
]

ConvTranspose2d = nn.ConvTranspose2d
BatchNorm2d = nn.BatchNorm2d
Linear = nn.Linear
interpolate = F.interpolate


class Conv2d(nn.Conv2d):
    """`torch.nn.Conv2d` followed by an optional normalization and an optional activation.

    Takes every argument of `torch.nn.Conv2d`, plus the keyword-only extras:

    Args:
        norm (nn.Module, optional): applied to the convolution's output, before `activation`.
            It is a child module named `norm`, so a checkpoint holds `weight`, `bias` (the
            convolution's) and `norm.*`, as Detectron2's do.
        activation (callable, optional): Tensor -> Tensor, applied last (e.g. `F.relu`).

    Input (N, C_in, H, W) -> output (N, C_out, H', W'); N may be 0.
    """

    def __init__(self, *args, norm: Optional[nn.Module] = None, activation=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # What nn.Conv2d.forward does; TorchScript cannot call super().forward.
        x = self._conv_forward(x, self.weight, self.bias)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def cat(tensors: List[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """`torch.cat`, except that a list (or tuple) of one tensor returns that tensor itself (no
    copy)."""
    if not torch.jit.is_scripting() and not isinstance(tensors, (list, tuple)):
        raise TypeError(f"cat: tensors must be a list or tuple of tensors, got {type(tensors).__name__}")
    if len(tensors) == 1:
        return tensors[0]
    return torch.cat(tensors, dim)


def empty_input_loss_func_wrapper(loss_func):
    """Wrap `loss_func(input, target, *, reduction=..., **kwargs)` so that a "mean" over an
    empty target is 0 (still connected to `input`'s graph, so backward works) instead of NaN."""

    def wrapped_loss_func(input, target, *, reduction="mean", **kwargs):
        if target.numel() == 0 and reduction == "mean":
            return input.sum() * 0.0
        return loss_func(input, target, reduction=reduction, **kwargs)

    wrapped_loss_func.__name__ = getattr(loss_func, "__name__", "wrapped_loss_func")
    wrapped_loss_func.__doc__ = (
        f"`{wrapped_loss_func.__name__}` that returns 0 rather than NaN for an empty input "
        f"when reduction='mean'."
    )
    return wrapped_loss_func


cross_entropy = empty_input_loss_func_wrapper(F.cross_entropy)


def nonzero_tuple(x: torch.Tensor):
    """`x.nonzero(as_tuple=True)`: a tuple of index tensors, one per dimension of `x`.

    A 0-d `x` is treated as a 1-element vector (TorchScript's `as_tuple` cannot be used, so the
    scripted branch builds the tuple by hand)."""
    if torch.jit.is_scripting():
        if x.dim() == 0:
            return x.unsqueeze(0).nonzero().unbind(1)
        return x.nonzero().unbind(1)
    return x.nonzero(as_tuple=True)


def shapes_to_tensor(x: List[int], device: Optional[torch.device] = None) -> torch.Tensor:
    """A list of sizes -> a 1-D integer tensor.

    In eager mode and TorchScript, `x` holds Python ints. While tracing, sizes are 0-d tensors
    and must stay so: `torch.stack` keeps them connected to the traced inputs, whereas
    `torch.as_tensor` would record today's values as constants.
    """
    if not torch.jit.is_scripting() and torch.jit.is_tracing():
        return _stack_traced_sizes(x, device)
    return torch.as_tensor(x, device=device)


def _stack_traced_sizes(x: List[torch.Tensor], device: Optional[torch.device]) -> torch.Tensor:
    not_tensors = [type(t).__name__ for t in x if not isinstance(t, torch.Tensor)]
    if not_tensors:
        raise TypeError(
            f"shapes_to_tensor: while tracing, every size must be a tensor (take them "
            f"from tensor.shape), got {not_tensors}"
        )
    stacked = torch.stack(x)
    # Moving only when needed keeps the device out of the trace when it is already right.
    return stacked if stacked.device == device else stacked.to(device=device)


@torch.jit.script_if_tracing
def move_device_like(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """`src` moved to `dst`'s device. Scripted when traced, so that the trace reads the device
    from `dst` at run time instead of recording the tracing device as a constant."""
    return src.to(dst.device)
