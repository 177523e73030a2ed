"""Rotated ROIAlign against a slow loop written from the op's definition, against ROIAlign for
upright boxes, plus gradcheck, opcheck and the edge cases."""
import math

import numpy as np
import pytest
import torch

from detzoo.layers.roi_align import roi_align
from detzoo.layers.roi_align_rotated import ROIAlignRotated, roi_align_rotated


def _bilinear(plane, y, x):
    """plane (C, H, W) sampled at (y, x): zero outside [-1, H] x [-1, W], border pixels beyond."""
    height, width = plane.shape[1:]
    if not (-1 <= y <= height and -1 <= x <= width):
        return np.zeros(plane.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = min(int(y), height - 1), min(int(x), width - 1)
    y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
    ly, lx = (y - y0 if y0 < height - 1 else 0.0), (x - x0 if x0 < width - 1 else 0.0)
    return (
        (1 - ly) * (1 - lx) * plane[:, y0, x0]
        + (1 - ly) * lx * plane[:, y0, x1]
        + ly * (1 - lx) * plane[:, y1, x0]
        + ly * lx * plane[:, y1, x1]
    )


def _reference(features, rois, output_size, spatial_scale, sampling_ratio):
    """Rotated ROIAlign, one sample at a time: bins on the box's axes, rotated about its centre."""
    features, rois = features.double().numpy(), rois.double().numpy()
    pooled_h, pooled_w = output_size
    out = np.zeros((len(rois), features.shape[1], pooled_h, pooled_w))
    for r, (image, cx, cy, w, h, angle) in enumerate(rois):
        cx, cy = cx * spatial_scale - 0.5, cy * spatial_scale - 0.5
        w, h = w * spatial_scale, h * spatial_scale
        cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(h / pooled_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(w / pooled_w)
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                total = np.zeros(features.shape[1])
                for iy in range(grid_h):
                    dy = -h / 2 + (ph + (iy + 0.5) / grid_h) * h / pooled_h
                    for ix in range(grid_w):
                        dx = -w / 2 + (pw + (ix + 0.5) / grid_w) * w / pooled_w
                        y, x = dy * cos - dx * sin + cy, dy * sin + dx * cos + cx
                        total += _bilinear(features[int(image)], y, x)
                out[r, :, ph, pw] = total / max(grid_h * grid_w, 1)
    return torch.from_numpy(out)


def _features(dtype=torch.float64, n=2, c=3, h=8, w=9, seed=0):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _rois(spatial_scale=1.0, n_images=2, h=8, w=9, count=6, dtype=torch.float64, seed=1):
    """Rotated boxes in image coordinates, some reaching outside the map, plus a zero-size one."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(count, 2, generator=g, dtype=torch.float64) * torch.tensor([w + 2.0, h + 2.0]) - 1
    size = torch.rand(count, 2, generator=g, dtype=torch.float64) * 7 + 0.5
    angle = torch.rand(count, 1, generator=g, dtype=torch.float64) * 360 - 180
    boxes = torch.cat([centre, size, angle], dim=1)
    boxes = torch.cat([boxes, torch.tensor([[4.0, 4.0, 0.0, 0.0, 30.0]], dtype=torch.float64)])
    boxes[:, :4] /= spatial_scale
    image = torch.randint(0, n_images, (len(boxes), 1), generator=g).to(torch.float64)
    return torch.cat([image, boxes], dim=1).to(dtype)


@pytest.mark.parametrize("sampling_ratio", [0, 1, 2])
@pytest.mark.parametrize("spatial_scale", [1.0, 0.5])
def test_matches_reference_loop(sampling_ratio, spatial_scale):
    features, rois = _features(), _rois(spatial_scale)
    expected = _reference(features, rois, (3, 4), spatial_scale, sampling_ratio)
    output = roi_align_rotated(features, rois, (3, 4), spatial_scale, sampling_ratio)
    torch.testing.assert_close(output, expected, rtol=1e-10, atol=1e-10)
    output = roi_align_rotated(features.float(), rois.float(), (3, 4), spatial_scale, sampling_ratio)
    torch.testing.assert_close(output, expected.float(), rtol=1e-4, atol=1e-4)


def test_few_samples_over_large_bins():
    # Bins much larger than the spacing of their samples (the kernels' sparse-bin path).
    features = _features(n=1, c=2, h=40, w=40)
    rois = torch.tensor([[0.0, 20.0, 18.0, 60.0, 50.0, 30.0], [0.0, 15.0, 25.0, 45.0, 70.0, -100.0]])
    expected = _reference(features, rois.double(), (2, 2), 1.0, 2)
    torch.testing.assert_close(roi_align_rotated(features, rois.double(), (2, 2), 1.0, 2), expected)


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_upright_box_equals_aligned_roi_align(sampling_ratio):
    features = _features(c=4, h=12, w=14)
    rotated = _rois(0.5, h=12, w=14, count=10, seed=3)
    rotated[:, 5] = 0
    cx, cy, w, h = rotated[:, 1:5].unbind(1)
    upright = torch.stack([rotated[:, 0], cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)
    torch.testing.assert_close(
        roi_align_rotated(features, rotated, (3, 3), 0.5, sampling_ratio),
        roi_align(features, upright, (3, 3), 0.5, sampling_ratio, aligned=True),
        rtol=1e-9,
        atol=1e-9,
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_gradcheck(seed):
    features = _features(c=2, h=6, w=7, seed=seed).requires_grad_()
    rois = _rois(h=6, w=7, count=3, seed=seed + 10)
    fn = lambda x: roi_align_rotated(x, rois, (2, 3), 1.0, 0)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (features,))
    assert torch.autograd.gradgradcheck(fn, (features,))


def test_gradient_is_adjoint_of_forward():
    # The op is linear in its input, so <op(x), g> == <x, op^T(g)> for the backward op^T.
    features, rois = _features(), _rois()
    grad_output = torch.randn(len(rois), 3, 3, 4, dtype=torch.float64)
    output = roi_align_rotated(features.requires_grad_(), rois, (3, 4), 1.0, 2)
    (grad_input,) = torch.autograd.grad(output, features, grad_output)
    torch.testing.assert_close((output * grad_output).sum(), (features * grad_input).sum())


def test_opcheck():
    features = _features(dtype=torch.float32).requires_grad_()
    rois = _rois(dtype=torch.float32)
    torch.library.opcheck(torch.ops.detzoo.roi_align_rotated.default, (features, rois, 1.0, 3, 4, 2))
    grad = torch.randn(len(rois), 3, 3, 4)
    torch.library.opcheck(
        torch.ops.detzoo._roi_align_rotated_backward.default, (grad, rois, 1.0, 3, 4, 2, 3, 8, 9, 0)
    )


def test_same_result_on_any_thread_count():
    features = _features(dtype=torch.float32, c=16, h=20, w=24).requires_grad_()
    rois = _rois(h=20, w=24, count=63, dtype=torch.float32)
    grad_output = torch.randn(64, 16, 5, 5)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            output = roi_align_rotated(features, rois, 5, 1.0, 0)
            results.append((output, torch.autograd.grad(output, features, grad_output)[0]))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_empty_rois():
    features = _features().requires_grad_()
    output = roi_align_rotated(features, torch.zeros(0, 6, dtype=torch.float64), (2, 2), 1.0, 0)
    assert output.shape == (0, 3, 2, 2)
    output.sum().backward()
    assert torch.equal(features.grad, torch.zeros_like(features))


def test_empty_feature_map():
    rois = torch.tensor([[0.0, 1.0, 1.0, 2.0, 2.0, 45.0]])
    assert torch.equal(roi_align_rotated(torch.zeros(1, 2, 0, 4), rois, 2, 1.0, 0), torch.zeros(1, 2, 2, 2))


def test_non_contiguous_inputs():
    features, rois = _features(dtype=torch.float32, c=6), _rois(dtype=torch.float32)
    expected = roi_align_rotated(features[:, ::2].contiguous(), rois, 3, 1.0, 2)
    channels_last = features[:, ::2].contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(roi_align_rotated(features[:, ::2], rois, 3, 1.0, 2), expected, rtol=0, atol=0)
    torch.testing.assert_close(roi_align_rotated(channels_last, rois, 3, 1.0, 2), expected, rtol=0, atol=0)
    wide_rois = torch.cat([rois, rois], dim=1)[:, :6]
    torch.testing.assert_close(roi_align_rotated(features[:, ::2], wide_rois, 3, 1.0, 2), expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_reduced_precision_close_to_float32(dtype, tolerance):
    features, rois = _features(dtype=torch.float32), _rois(dtype=torch.float32)
    # Coordinates on a 0.5 grid and whole-degree angles are exact in half and bfloat16.
    rois = (rois * 2).round() / 2
    rois[:, 5] = rois[:, 5].round()
    expected = roi_align_rotated(features, rois, 3, 1.0, 0)
    output = roi_align_rotated(features.to(dtype), rois.to(dtype), 3, 1.0, 0)
    assert output.dtype == dtype
    torch.testing.assert_close(output.float(), expected, rtol=tolerance, atol=tolerance)
    # The module pools reduced-precision inputs in float32, as Detectron2 does.
    module_output = ROIAlignRotated(3, 1.0, 0)(features.to(dtype), rois)
    assert module_output.dtype == dtype
    torch.testing.assert_close(module_output.float(), expected, rtol=tolerance, atol=tolerance)


def test_module():
    features, rois = _features(dtype=torch.float32), _rois()
    pooler = ROIAlignRotated((3, 4), spatial_scale=1.0, sampling_ratio=2)
    assert repr(pooler) == "ROIAlignRotated(output_size=(3, 4), spatial_scale=1.0, sampling_ratio=2)"
    torch.testing.assert_close(
        pooler(features, rois), roi_align_rotated(features, rois.float(), (3, 4), 1.0, 2), rtol=0, atol=0
    )
    with pytest.raises(ValueError, match=r"rois must have shape \(R, 6\)"):
        pooler(features, rois[:, :5])


@pytest.mark.parametrize(
    "make_args,name",
    [
        (lambda x, r: (x[0], r), "input"),
        (lambda x, r: (x, r[:, :5]), "rois"),
        (lambda x, r: (x, r.double()), "rois"),
        (lambda x, r: (x, r.to("meta")), "rois"),
    ],
)
def test_bad_input_is_named(make_args, name):
    features, rois = _features(dtype=torch.float32), _rois(dtype=torch.float32)
    with pytest.raises(ValueError, match=name):
        roi_align_rotated(*make_args(features, rois), 3, 1.0, 0)


def test_negative_box_size_is_rejected():
    rois = torch.tensor([[0.0, 4.0, 4.0, -2.0, 3.0, 10.0]], dtype=torch.float64)
    with pytest.raises(RuntimeError, match="non-negative"):
        roi_align_rotated(_features(), rois, 2, 1.0, 0)
