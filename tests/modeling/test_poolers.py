"""ROIPooler against per-box torchvision.ops.roi_align / roi_pool on the level given by a
brute-force FPN formula; level assignment, the ROI row format, empty inputs, errors."""
import math
import sys

import pytest
import torch
from torchvision.ops import roi_align as tv_roi_align
from torchvision.ops import roi_pool as tv_roi_pool

from detzoo.modeling.poolers import ROIPooler, assign_boxes_to_levels, convert_boxes_to_pooler_format
from detzoo.structures import Boxes, RotatedBoxes

SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)  # P2 .. P5
MIN_LEVEL, MAX_LEVEL = 2, 5


def _brute_force_level(box, canonical_box_size=224, canonical_level=4):
    """The FPN level of one XYXY box, in float64, clamped to P2 .. P5."""
    x0, y0, x1, y1 = box
    size = math.sqrt((x1 - x0) * (y1 - y0))
    level = math.floor(canonical_level + math.log2(size / canonical_box_size + sys.float_info.epsilon))
    return min(max(level, MIN_LEVEL), MAX_LEVEL)


def _random_boxes(n, generator, image_size=256, log_size_range=(2.0, 9.5)):
    """Boxes of sizes spread over all levels; sizes within 1e-3 (in log2) of a level boundary
    are avoided so that float32 and float64 agree on the level."""
    low, high = log_size_range
    log_sizes = torch.rand(4 * n, generator=generator, dtype=torch.float64) * (high - low) + low
    log_sizes = log_sizes[(log_sizes - log_sizes.round()).abs() > 1e-3][:n]
    sizes = 2.0**log_sizes
    ratios = torch.rand(n, generator=generator, dtype=torch.float64) + 0.5
    widths, heights = sizes * ratios.sqrt(), sizes / ratios.sqrt()
    x0 = torch.rand(n, generator=generator, dtype=torch.float64) * image_size - widths / 4
    y0 = torch.rand(n, generator=generator, dtype=torch.float64) * image_size - heights / 4
    return Boxes(torch.stack([x0, y0, x0 + widths, y0 + heights], dim=1))


def _pyramid(batch, channels, image_size, generator, dtype=torch.float32):
    return [
        torch.randn(batch, channels, int(image_size * s), int(image_size * s), generator=generator, dtype=dtype)
        for s in SCALES
    ]


def _per_box_reference(features, box_lists, op):
    """Each box pooled alone, on the level the brute-force formula gives it."""
    outputs = []
    for image, boxes in enumerate(box_lists):
        for box in boxes.tensor:
            level = _brute_force_level(box.double().tolist())
            row = torch.cat([torch.tensor([float(image)]), box])[None].to(features[0].dtype)
            outputs.append(op(features[level - MIN_LEVEL], row, SCALES[level - MIN_LEVEL]))
    return torch.cat(outputs)


def test_assign_boxes_to_levels_boundaries():
    sizes = [224.0, 112.0, 448.0, 896.0, 56.0, 223.9, 1.0, 5000.0]
    boxes = Boxes(torch.tensor([[10.0, 20.0, 10.0 + s, 20.0 + s] for s in sizes]))
    empty_box = Boxes(torch.tensor([[5.0, 5.0, 5.0, 9.0]]))
    levels = assign_boxes_to_levels([boxes, Boxes(torch.zeros(0, 4)), empty_box], 2, 5, 224, 4)
    assert levels.dtype == torch.int64
    # Exactly 224 px is level 4; each doubling goes one level up; the rest is clamped.
    assert levels.tolist() == [2, 1, 3, 3, 0, 1, 0, 3, 0]


def test_assign_boxes_to_levels_brute_force():
    g = torch.Generator().manual_seed(0)
    box_lists = [_random_boxes(40, g), _random_boxes(25, g)]
    for canonical_box_size, canonical_level in ((224, 4), (128, 3)):
        levels = assign_boxes_to_levels(box_lists, 2, 5, canonical_box_size, canonical_level)
        expected = [
            _brute_force_level(box.double().tolist(), canonical_box_size, canonical_level) - 2
            for boxes in box_lists
            for box in boxes.tensor
        ]
        assert levels.tolist() == expected


def test_convert_boxes_to_pooler_format():
    a = Boxes(torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]))
    c = Boxes(torch.tensor([[9.0, 10.0, 11.0, 12.0]]))
    rows = convert_boxes_to_pooler_format([a, Boxes(torch.zeros(0, 4)), c])
    expected = torch.tensor([[0.0, 1, 2, 3, 4], [0.0, 5, 6, 7, 8], [2.0, 9, 10, 11, 12]])
    assert torch.equal(rows, expected)
    rotated = convert_boxes_to_pooler_format([RotatedBoxes(torch.ones(2, 5)), RotatedBoxes(torch.ones(1, 5))])
    assert rotated.shape == (3, 6) and rotated[:, 0].tolist() == [0.0, 0.0, 1.0]
    assert convert_boxes_to_pooler_format([Boxes(torch.zeros(0, 4))]).shape == (0, 5)


@pytest.mark.parametrize("pooler_type, aligned", [("ROIAlignV2", True), ("ROIAlign", False)])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_multi_level_roi_align_matches_torchvision(pooler_type, aligned, sampling_ratio):
    g = torch.Generator().manual_seed(1)
    features = _pyramid(2, 3, 256, g)
    box_lists = [_random_boxes(30, g), _random_boxes(20, g)]
    pooler = ROIPooler((7, 5), SCALES, sampling_ratio, pooler_type)
    assert set(assign_boxes_to_levels(box_lists, 2, 5, 224, 4).tolist()) == {0, 1, 2, 3}
    out = pooler(features, box_lists)

    def op(feature, row, scale):
        return tv_roi_align(feature, row, (7, 5), scale, sampling_ratio, aligned)

    assert out.shape == (50, 3, 7, 5)
    torch.testing.assert_close(out, _per_box_reference(features, box_lists, op), rtol=1e-5, atol=1e-5)


def test_multi_level_roi_pool_matches_torchvision():
    g = torch.Generator().manual_seed(2)
    features = _pyramid(2, 3, 256, g)
    box_lists = [_random_boxes(15, g), _random_boxes(15, g)]
    out = ROIPooler(4, SCALES, 0, "ROIPool")(features, box_lists)

    def op(feature, row, scale):
        return tv_roi_pool(feature, row, 4, scale)

    torch.testing.assert_close(out, _per_box_reference(features, box_lists, op))


def test_single_level_pools_every_box_there():
    g = torch.Generator().manual_seed(3)
    feature = torch.randn(2, 4, 32, 32, generator=g)
    box_lists = [_random_boxes(6, g, image_size=500), _random_boxes(3, g, image_size=500)]
    out = ROIPooler(7, [1 / 16], 2, "ROIAlignV2")([feature], box_lists)
    rows = convert_boxes_to_pooler_format(box_lists)
    torch.testing.assert_close(out, tv_roi_align(feature, rows, 7, 1 / 16, 2, aligned=True), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scales", [SCALES, (1 / 16,)])
def test_empty_inputs(scales):
    g = torch.Generator().manual_seed(4)
    features = [f[:, :, : int(256 * s), : int(256 * s)] for f, s in zip(_pyramid(2, 3, 256, g), scales)]
    pooler = ROIPooler(7, scales, 0, "ROIAlignV2")
    empty = Boxes(torch.zeros(0, 4))
    assert pooler(features, [empty, empty]).shape == (0, 3, 7, 7)
    assert pooler([f[:0] for f in features], []).shape == (0, 3, 7, 7)
    some = _random_boxes(5, g)
    out = pooler(features, [empty, some])
    assert out.shape == (5, 3, 7, 7)
    torch.testing.assert_close(out, pooler([f[1:] for f in features], [some]))


def test_non_contiguous_features_and_dtype():
    g = torch.Generator().manual_seed(5)
    features = _pyramid(1, 4, 128, g)
    box_lists = [_random_boxes(12, g, image_size=128)]
    pooler = ROIPooler(5, SCALES, 2, "ROIAlignV2")
    expected = pooler(features, box_lists)
    channels_last = [f.to(memory_format=torch.channels_last) for f in features]
    assert not channels_last[0].is_contiguous()
    torch.testing.assert_close(pooler(channels_last, box_lists), expected)
    double = pooler([f.double() for f in features], box_lists)
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), expected, rtol=1e-5, atol=1e-5)


def test_gradient_reaches_every_used_level():
    g = torch.Generator().manual_seed(6)
    features = [f.double().requires_grad_() for f in _pyramid(1, 1, 128, g)]
    sizes = [60.0, 150.0, 300.0, 600.0]  # P2, P3, P4, P5 with 224 px canonical at P4
    boxes = Boxes(torch.tensor([[64 - s / 2, 64 - s / 2, 64 + s / 2, 64 + s / 2] for s in sizes]))
    pooler = ROIPooler(2, SCALES, 2, "ROIAlignV2")
    assert assign_boxes_to_levels([boxes], 2, 5, 224, 4).tolist() == [0, 1, 2, 3]
    pooler(features, [boxes]).sum().backward()
    assert all(f.grad.abs().sum() > 0 for f in features)
    # float64 gradcheck on the two smallest maps (few elements), the others held fixed.
    fixed = [f.detach() for f in features[:2]]
    small = tuple(f.detach().requires_grad_() for f in features[2:])
    assert torch.autograd.gradcheck(lambda *x: pooler(fixed + list(x), [boxes]), small)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(pooler_type="ROIAlignV3"), "unknown pooler_type"),
        (dict(scales=[1 / 3]), "power-of-2"),
        (dict(scales=[1 / 4, 1 / 16]), "consecutive"),
        (dict(scales=[]), "none"),
        (dict(output_size=(7, 0)), "output_size"),
        (dict(canonical_box_size=0), "canonical_box_size"),
    ],
)
def test_bad_construction(kwargs, message):
    args = dict(output_size=7, scales=SCALES, sampling_ratio=0, pooler_type="ROIAlignV2")
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ROIPooler(**args)


def test_bad_forward_inputs():
    g = torch.Generator().manual_seed(7)
    features = _pyramid(2, 3, 64, g)
    pooler = ROIPooler(7, SCALES, 0, "ROIAlignV2")
    boxes = _random_boxes(3, g, image_size=64)
    with pytest.raises(ValueError, match="4 feature maps"):
        pooler(features[:3], [boxes, boxes])
    with pytest.raises(ValueError, match="batch of 2"):
        pooler(features, [boxes])
    with pytest.raises(TypeError, match="lists"):
        pooler(tuple(features), [boxes, boxes])


def test_rotated_with_zero_angle_matches_aligned_roi_align():
    # ROIAlignRotated uses the half-pixel (aligned) sampling; an upright rotated box pools
    # what ROIAlignV2 pools for the same axis-aligned box.
    g = torch.Generator().manual_seed(8)
    features = _pyramid(2, 3, 256, g)
    box_lists = [_random_boxes(10, g), _random_boxes(6, g)]
    rotated_lists = []
    for boxes in box_lists:
        t = boxes.tensor
        centers, sizes = (t[:, :2] + t[:, 2:]) / 2, t[:, 2:] - t[:, :2]
        rotated_lists.append(RotatedBoxes(torch.cat([centers, sizes, torch.zeros(len(t), 1)], dim=1)))
    out = ROIPooler(7, SCALES, 2, "ROIAlignRotated")(features, rotated_lists)
    expected = ROIPooler(7, SCALES, 2, "ROIAlignV2")(features, box_lists)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
