"""Deformable convolution against torchvision.ops.deform_conv2d on a res5-like layer of a
deformable ResNet (Detectron2's DEFORM_ON_PER_STAGE for res5): 2 images, 512 -> 512 channels,
3 x 3 kernel, padding 1, on a 25 x 34 map (stride 32 of an 800 x 1088 image). Offsets are
random, about 2 pixels; the v2 mask is a sigmoid of random logits.
"""
import torch
import torchvision

from detzoo.layers.deform_conv import deform_conv, modulated_deform_conv

BATCH, CHANNELS, HEIGHT, WIDTH = 2, 512, 25, 34
KERNEL = 3
TAPS = KERNEL * KERNEL


def _inputs(generator):
    x = torch.randn(BATCH, CHANNELS, HEIGHT, WIDTH, generator=generator)
    weight = torch.randn(CHANNELS, CHANNELS, KERNEL, KERNEL, generator=generator) * 0.02
    offset = torch.randn(BATCH, 2 * TAPS, HEIGHT, WIDTH, generator=generator) * 2
    mask = torch.randn(BATCH, TAPS, HEIGHT, WIDTH, generator=generator).sigmoid()
    bias = torch.randn(CHANNELS, generator=generator)
    return x, weight, offset, mask, bias


def _ours(modulated):
    if modulated:
        return lambda x, w, o, m, b: modulated_deform_conv(x, o, m, w, b, 1, 1)
    return lambda x, w, o, m, b: deform_conv(x, o, w, 1, 1)


def _torchvision(modulated):
    if modulated:
        return lambda x, w, o, m, b: torchvision.ops.deform_conv2d(x, o, w, b, padding=1, mask=m)
    return lambda x, w, o, m, b: torchvision.ops.deform_conv2d(x, o, w, padding=1)


def _name(modulated):
    variant = "v2 (modulated, bias)" if modulated else "v1"
    return f"deform_conv {variant} {BATCH}x{CHANNELS}->{CHANNELS}ch 3x3 on {HEIGHT}x{WIDTH}"


def _forward_case(Case, tensors, modulated):
    ours, peer = _ours(modulated), _torchvision(modulated)
    return Case(_name(modulated), lambda: ours(*tensors), lambda: peer(*tensors), "torchvision")


def _backward_case(Case, tensors, modulated):
    """Forward + backward to every input that the variant uses."""
    used = 5 if modulated else 3
    leaves = [t.detach().clone().requires_grad_(i < used) for i, t in enumerate(tensors)]
    grad_output = torch.randn(BATCH, CHANNELS, HEIGHT, WIDTH)

    def run(fn):
        return lambda: torch.autograd.grad(fn(*leaves), leaves[:used], grad_output)

    return Case(f"{_name(modulated)} forward+backward", run(_ours(modulated)), run(_torchvision(modulated)),
                "torchvision")


def cases(Case):
    tensors = _inputs(torch.Generator().manual_seed(0))
    return [
        _forward_case(Case, tensors, False),
        _forward_case(Case, tensors, True),
        _backward_case(Case, tensors, False),
        _backward_case(Case, tensors, True),
    ]
