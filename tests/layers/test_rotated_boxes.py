"""pairwise_iou_rotated against a slow float64 polygon-clipping reference written here.

The reference clips one box's polygon by the four edge lines of the other, in image
coordinates (the kernel clips in the second box's own frame), so the two share no code path.
"""
import math

import numpy as np
import pytest
import torch
import torchvision

from detzoo.layers import pairwise_iou_rotated


def rotated_corners(box):
    """Corners of [x_ctr, y_ctr, w, h, angle_deg] (angle counter-clockwise with y pointing down),
    in order around the box."""
    cx, cy, w, h, angle = (float(v) for v in box)
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    local = [(w / 2, h / 2), (-w / 2, h / 2), (-w / 2, -h / 2), (w / 2, -h / 2)]
    return np.array([(cx + u * c + v * s, cy - u * s + v * c) for u, v in local], dtype=np.float64)


def shoelace(poly):
    if len(poly) < 3:
        return 0.0
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def clip_polygon(subject, clipper):
    """Sutherland-Hodgman: the part of convex `subject` inside convex, counter-clockwise
    (positive shoelace) `clipper`."""
    output = [tuple(p) for p in subject]
    for k in range(len(clipper)):
        a, b = clipper[k], clipper[(k + 1) % len(clipper)]
        edge = b - a

        def side(p):  # > 0: left of the edge, inside
            return edge[0] * (p[1] - a[1]) - edge[1] * (p[0] - a[0])

        points, output = output, []
        for i, p in enumerate(points):
            q = points[(i + 1) % len(points)]
            sp, sq = side(p), side(q)
            if sp >= 0:
                output.append(p)
            if (sp >= 0) != (sq >= 0):
                t = sp / (sp - sq)
                output.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
        if not output:
            break
    return np.array(output, dtype=np.float64).reshape(-1, 2)


def rotated_iou_reference(box1, box2):
    area1, area2 = float(box1[2]) * float(box1[3]), float(box2[2]) * float(box2[3])
    if area1 < 1e-14 or area2 < 1e-14:
        return 0.0
    p1, p2 = rotated_corners(box1), rotated_corners(box2)
    if shoelace(p2) < 0:
        p2 = p2[::-1].copy()
    inter = abs(shoelace(clip_polygon(p1, p2)))
    return inter / (area1 + area2 - inter)


def pairwise_reference(boxes1, boxes2):
    return torch.tensor(
        [[rotated_iou_reference(b1, b2) for b2 in boxes2.tolist()] for b1 in boxes1.tolist()], dtype=torch.float64
    ).reshape(len(boxes1), len(boxes2))


def random_rotated_boxes(n, seed, extent=60.0, dtype=torch.float32):
    """Boxes crowded into a small area so that most pairs overlap, with all angles."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(n, 2, generator=g) * extent
    sizes = 5 + torch.rand(n, 2, generator=g) * 40
    angles = torch.rand(n, 1, generator=g) * 720 - 360
    return torch.cat([centres, sizes, angles], 1).to(dtype)


def xywha_to_xyxy(boxes):
    return torch.cat([boxes[:, :2] - boxes[:, 2:4] / 2, boxes[:, :2] + boxes[:, 2:4] / 2], 1)


class TestPairwiseIouRotated:
    def test_matches_reference_float64(self):
        boxes1, boxes2 = random_rotated_boxes(30, 0, dtype=torch.float64), random_rotated_boxes(25, 1, dtype=torch.float64)
        ious = pairwise_iou_rotated(boxes1, boxes2)
        assert ious.dtype == torch.float64 and ious.shape == (30, 25)
        torch.testing.assert_close(ious, pairwise_reference(boxes1, boxes2), rtol=0, atol=1e-10)
        assert (ious > 0.05).sum() > 100  # the case is really about overlaps

    def test_matches_reference_float32(self):
        boxes1, boxes2 = random_rotated_boxes(30, 2), random_rotated_boxes(40, 3)
        ious = pairwise_iou_rotated(boxes1, boxes2)
        assert ious.dtype == torch.float32
        torch.testing.assert_close(ious.double(), pairwise_reference(boxes1, boxes2), rtol=0, atol=2e-5)

    def test_angle_zero_equals_axis_aligned_iou(self):
        boxes1, boxes2 = random_rotated_boxes(40, 4), random_rotated_boxes(30, 5)
        boxes1[:, 4] = 0
        boxes2[:, 4] = 0
        expected = torchvision.ops.box_iou(xywha_to_xyxy(boxes1), xywha_to_xyxy(boxes2))
        torch.testing.assert_close(pairwise_iou_rotated(boxes1, boxes2), expected, rtol=0, atol=1e-5)

    def test_quarter_turn_swaps_width_and_height(self):
        boxes1, boxes2 = random_rotated_boxes(20, 6), random_rotated_boxes(20, 7)
        turned = boxes2[:, [0, 1, 3, 2, 4]].clone()
        turned[:, 4] += 90
        flipped = boxes2.clone()
        flipped[:, 4] -= 180
        expected = pairwise_iou_rotated(boxes1, boxes2)
        torch.testing.assert_close(pairwise_iou_rotated(boxes1, turned), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(pairwise_iou_rotated(boxes1, flipped), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(pairwise_iou_rotated(boxes2, boxes1), expected.t(), rtol=0, atol=1e-5)

    def test_angle_is_counter_clockwise_in_image_space(self):
        # A long thin box at +45 degrees points up-right on screen (towards -y), so it covers
        # a small box above-right of its centre and misses one below-right.
        bar = torch.tensor([[0.0, 0.0, 20.0, 1.0, 45.0]])
        small = torch.tensor([[5.0, -5.0, 1.0, 1.0, 0.0], [5.0, 5.0, 1.0, 1.0, 0.0]])
        ious = pairwise_iou_rotated(bar, small)
        assert ious[0, 0] > 0.02 and ious[0, 1] == 0

    def test_known_values(self):
        square = torch.tensor([[0.0, 0.0, 10.0, 10.0, 0.0]])
        others = torch.tensor([
            [0.0, 0.0, 10.0, 10.0, 0.0],    # itself
            [0.0, 0.0, 10.0, 10.0, 45.0],   # octagon of area 200 (sqrt(2) - 1)
            [5.0, 0.0, 10.0, 10.0, 0.0],    # half overlap: 50 / 150
            [20.0, 0.0, 10.0, 10.0, 30.0],  # disjoint
            [0.0, 0.0, 0.0, 10.0, 0.0],     # empty box
        ])
        octagon = 200 * (math.sqrt(2) - 1)
        expected = torch.tensor([[1.0, octagon / (200 - octagon), 1 / 3, 0.0, 0.0]])
        torch.testing.assert_close(pairwise_iou_rotated(square, others), expected, rtol=0, atol=1e-6)

    def test_far_from_origin(self):
        boxes1, boxes2 = random_rotated_boxes(15, 8, dtype=torch.float64), random_rotated_boxes(15, 9, dtype=torch.float64)
        expected = pairwise_reference(boxes1, boxes2)
        for boxes in (boxes1, boxes2):
            boxes[:, :2] += 3e4
        torch.testing.assert_close(pairwise_iou_rotated(boxes1.float(), boxes2.float()).double(), expected,
                                   rtol=0, atol=2e-3)

    @pytest.mark.parametrize("n, m", [(0, 3), (3, 0), (0, 0)])
    def test_empty(self, n, m):
        ious = pairwise_iou_rotated(torch.zeros(n, 5), torch.zeros(m, 5))
        assert ious.shape == (n, m) and ious.dtype == torch.float32

    def test_non_contiguous(self):
        wide1 = random_rotated_boxes(24, 10).repeat_interleave(2, dim=1)[:, ::2]
        boxes2 = random_rotated_boxes(6, 11).t().contiguous().t()
        assert not wide1.is_contiguous() and not boxes2.is_contiguous()
        torch.testing.assert_close(pairwise_iou_rotated(wide1, boxes2),
                                   pairwise_iou_rotated(wide1.contiguous(), boxes2.contiguous()))

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_reduced_precision(self, dtype):
        boxes1, boxes2 = random_rotated_boxes(20, 12).to(dtype), random_rotated_boxes(20, 13).to(dtype)
        ious = pairwise_iou_rotated(boxes1, boxes2)
        assert ious.dtype == dtype
        # computed in float from the rounded inputs: only the output rounding differs
        expected = pairwise_iou_rotated(boxes1.float(), boxes2.float())
        torch.testing.assert_close(ious.float(), expected, rtol=0, atol=1e-2)

    def test_bad_inputs(self):
        good = torch.zeros(2, 5)
        with pytest.raises(ValueError, match="boxes1 must have shape"):
            pairwise_iou_rotated(torch.zeros(2, 4), good)
        with pytest.raises(ValueError, match="boxes2 must have shape"):
            pairwise_iou_rotated(good, torch.zeros(5))
        with pytest.raises(TypeError, match="boxes2 must have boxes1's dtype"):
            pairwise_iou_rotated(good, good.double())
        with pytest.raises(TypeError, match="boxes1 must have a floating dtype"):
            pairwise_iou_rotated(good.long(), good)
        with pytest.raises(ValueError, match="boxes2 is on meta"):
            pairwise_iou_rotated(good, good.to("meta"))

    def test_opcheck(self):
        torch.library.opcheck(torch.ops.detzoo.box_iou_rotated.default,
                              (random_rotated_boxes(7, 14), random_rotated_boxes(5, 15)))
