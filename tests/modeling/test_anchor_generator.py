"""Anchor generators: hand-computed cell anchors, a brute-force loop over grid positions,
torchvision's AnchorGenerator where conventions agree, config building, state dicts, errors."""
import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList as TVImageList

from detzoo.config import get_cfg
from detzoo.layers import ShapeSpec
from detzoo.modeling.anchor_generator import (
    ANCHOR_GENERATOR_REGISTRY,
    DefaultAnchorGenerator,
    RotatedAnchorGenerator,
    build_anchor_generator,
)
from detzoo.structures import Boxes, RotatedBoxes


def _features(*sizes, batch=2, channels=3):
    return [torch.zeros(batch, channels, h, w) for h, w in sizes]


def _brute_force_anchors(sizes, ratios, stride, offset, grid_h, grid_w):
    """Anchors by the definition: position-major, then size, then ratio; float64 maths."""
    rows = []
    for row in range(grid_h):
        for col in range(grid_w):
            cx, cy = (col + offset) * stride, (row + offset) * stride
            for size in sizes:
                for ratio in ratios:
                    w = size / math.sqrt(ratio)
                    h = size * math.sqrt(ratio)
                    rows.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return torch.tensor(rows, dtype=torch.float64)


def test_cell_anchors_hand_computed():
    gen = DefaultAnchorGenerator(sizes=[[32]], aspect_ratios=[[0.5, 1.0, 2.0]], strides=[16])
    r2 = math.sqrt(2.0)
    # size 32, h / w = 0.5 -> w = 32 sqrt(2), h = 16 sqrt(2); h / w = 2 -> the transpose.
    expected = torch.tensor(
        [
            [-16 * r2, -8 * r2, 16 * r2, 8 * r2],
            [-16.0, -16.0, 16.0, 16.0],
            [-8 * r2, -16 * r2, 8 * r2, 16 * r2],
        ]
    )
    (cell,) = list(gen.cell_anchors)
    assert cell.dtype == torch.float32
    torch.testing.assert_close(cell, expected, rtol=0, atol=1e-5)


def test_grid_hand_computed_offset():
    gen = DefaultAnchorGenerator(sizes=[[8]], aspect_ratios=[[1.0]], strides=[4], offset=0.5)
    (anchors,) = gen(_features((2, 3)))
    assert isinstance(anchors, Boxes)
    centers = [(2.0, 2.0), (6.0, 2.0), (10.0, 2.0), (2.0, 6.0), (6.0, 6.0), (10.0, 6.0)]
    expected = torch.tensor([[x - 4, y - 4, x + 4, y + 4] for x, y in centers])
    assert torch.equal(anchors.tensor, expected)


@pytest.mark.parametrize("offset", [0.0, 0.5, 0.25])
def test_matches_brute_force(offset):
    sizes = [[32, 64], [128]]
    ratios = [[0.5, 1.0, 2.0], [0.25, 1.0]]
    strides = [8, 16]
    grids = [(5, 7), (3, 4)]
    gen = DefaultAnchorGenerator(sizes=sizes, aspect_ratios=ratios, strides=strides, offset=offset)
    assert gen.num_anchors == [6, 2] and gen.num_cell_anchors == [6, 2]
    out = gen(_features(*grids))
    assert len(out) == 2
    for level, anchors in enumerate(out):
        expected = _brute_force_anchors(sizes[level], ratios[level], strides[level], offset, *grids[level])
        assert anchors.tensor.dtype == torch.float32
        torch.testing.assert_close(anchors.tensor.double(), expected, rtol=1e-6, atol=1e-4)


def test_matches_torchvision():
    # torchvision rounds its cell anchors, orders them ratio-major and puts the first center at
    # 0: with offset 0, integral cell anchors and one size per level the conventions agree.
    sizes, ratios, strides = [[32], [64]], [[0.25, 1.0, 4.0]] * 2, [8, 16]
    features = _features((6, 6), (3, 3), batch=1)
    tv_gen = TVAnchorGenerator(sizes=((32,), (64,)), aspect_ratios=((0.25, 1.0, 4.0),) * 2)
    image_list = TVImageList(torch.zeros(1, 3, 48, 48), [(48, 48)])
    (tv_anchors,) = tv_gen(image_list, features)
    gen = DefaultAnchorGenerator(sizes=sizes, aspect_ratios=ratios, strides=strides, offset=0.0)
    ours = torch.cat([b.tensor for b in gen(features)])
    assert torch.equal(ours, tv_anchors)


def test_broadcast_of_single_list():
    flat = DefaultAnchorGenerator(sizes=[32, 64], aspect_ratios=[1.0], strides=[4, 8])
    nested = DefaultAnchorGenerator(sizes=[[32, 64]], aspect_ratios=[[1.0]], strides=[4, 8])
    assert flat.num_anchors == nested.num_anchors == [2, 2]
    for a, b in zip(flat.cell_anchors, nested.cell_anchors):
        assert torch.equal(a, b)


def test_cell_anchors_not_in_state_dict_but_move_with_module():
    gen = DefaultAnchorGenerator(sizes=[[32]], aspect_ratios=[[1.0]], strides=[4])
    assert len(gen.state_dict()) == 0
    assert len(list(gen.buffers())) == 1
    gen.to(torch.float64)
    assert next(iter(gen.cell_anchors)).dtype == torch.float64


def test_empty_feature_map():
    gen = DefaultAnchorGenerator(sizes=[[32]], aspect_ratios=[[0.5, 1.0]], strides=[4])
    (anchors,) = gen(_features((0, 5)))
    assert anchors.tensor.shape == (0, 4)


def test_rotated_brute_force():
    sizes, ratios, angles = [16, 32], [0.5, 1.0], [-90.0, 0.0, 45.0]
    stride, grid_h, grid_w, offset = 8, 2, 3, 0.5
    gen = RotatedAnchorGenerator(sizes=sizes, aspect_ratios=ratios, strides=[stride], angles=angles, offset=offset)
    assert gen.box_dim == 5 and gen.num_anchors == [12]
    (anchors,) = gen(_features((grid_h, grid_w)))
    assert isinstance(anchors, RotatedBoxes)
    rows = []
    for row in range(grid_h):
        for col in range(grid_w):
            for size in sizes:
                for ratio in ratios:
                    for angle in angles:
                        rows.append(
                            [(col + offset) * stride, (row + offset) * stride, size / math.sqrt(ratio),
                             size * math.sqrt(ratio), angle]
                        )
    torch.testing.assert_close(anchors.tensor.double(), torch.tensor(rows, dtype=torch.float64), rtol=1e-6, atol=1e-4)
    assert len(gen.state_dict()) == 0


def test_build_from_config():
    cfg = get_cfg()
    shapes = [ShapeSpec(channels=8, stride=s) for s in (4, 8, 16, 32, 64)]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    gen = build_anchor_generator(cfg, shapes)
    assert isinstance(gen, DefaultAnchorGenerator)
    assert gen.strides == [4, 8, 16, 32, 64] and gen.offset == cfg.MODEL.ANCHOR_GENERATOR.OFFSET
    assert gen.num_anchors == [3] * 5 and gen.box_dim == 4

    cfg.MODEL.ANCHOR_GENERATOR.NAME = "RotatedAnchorGenerator"
    cfg.MODEL.ANCHOR_GENERATOR.ANGLES = [[-90, 0, 90]]
    rotated = build_anchor_generator(cfg, shapes)
    assert isinstance(rotated, RotatedAnchorGenerator) and rotated.num_anchors == [9] * 5
    assert "DefaultAnchorGenerator" in ANCHOR_GENERATOR_REGISTRY


def test_bad_arguments():
    with pytest.raises(ValueError, match="offset"):
        DefaultAnchorGenerator(sizes=[32], aspect_ratios=[1.0], strides=[4], offset=1.0)
    with pytest.raises(ValueError, match="sizes has 2 lists"):
        DefaultAnchorGenerator(sizes=[[32], [64]], aspect_ratios=[1.0], strides=[4, 8, 16])
    with pytest.raises(ValueError, match="must not be empty"):
        DefaultAnchorGenerator(sizes=[], aspect_ratios=[1.0], strides=[4])
    with pytest.raises(TypeError, match="must be a list"):
        DefaultAnchorGenerator(sizes=32, aspect_ratios=[1.0], strides=[4])
    with pytest.raises(ValueError, match="positive"):
        DefaultAnchorGenerator(sizes=[32], aspect_ratios=[0.0], strides=[4])
    gen = DefaultAnchorGenerator(sizes=[32], aspect_ratios=[1.0], strides=[4, 8])
    with pytest.raises(ValueError, match="2 strides"):
        gen(_features((4, 4)))
