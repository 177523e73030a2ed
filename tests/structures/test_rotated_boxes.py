import math

import pytest
import torch
from torchvision.ops import box_iou

from detzoo import _ext
from detzoo.structures import Boxes, BoxMode, RotatedBoxes, pairwise_iou_rotated


def rotated_corners(box):
    """Corners A, B, C, D of an XYWHA box (A top-left before rotation, clockwise on screen)."""
    xc, yc, w, h, a = [float(v) for v in box]
    t = math.radians(a)
    offsets = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
    return [
        (xc + math.cos(t) * dx + math.sin(t) * dy, yc - math.sin(t) * dx + math.cos(t) * dy)
        for dx, dy in offsets
    ]


def random_rotated(n, seed, angle_range=360.0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(n, 2, generator=g) * 100
    sizes = torch.rand(n, 2, generator=g) * 40 + 1
    angles = (torch.rand(n, 1, generator=g) - 0.5) * angle_range
    return torch.cat([centers, sizes, angles], dim=1)


def polygon_area(points):
    return 0.5 * abs(
        sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]))
    )


def clip_polygon(subject, clip):
    """Sutherland-Hodgman: the part of convex polygon `subject` inside convex `clip`."""
    orientation = 1.0 if sum(
        x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(clip, clip[1:] + clip[:1])
    ) > 0 else -1.0
    output = subject
    for (ax, ay), (bx, by) in zip(clip, clip[1:] + clip[:1]):
        def side(p):
            return orientation * ((bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax))

        points, output = output, []
        for p, q in zip(points, points[1:] + points[:1]):
            sp, sq = side(p), side(q)
            if sp >= 0:
                output.append(p)
            if sp * sq < 0:
                t = sp / (sp - sq)
                output.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
        if not output:
            return []
    return output


def brute_rotated_iou(a, b):
    pa, pb = rotated_corners(a), rotated_corners(b)
    inter_polygon = clip_polygon(pa, pb)
    inter = polygon_area(inter_polygon) if len(inter_polygon) >= 3 else 0.0
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def rotated_iou_op_built():
    """True once detzoo._C is built with a CPU kernel for detzoo::box_iou_rotated."""
    try:
        _ext.load()
    except RuntimeError:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("detzoo::box_iou_rotated", "CPU")


class TestRotatedBoxes:
    def test_construction(self):
        boxes = RotatedBoxes([[1, 2, 3, 4, 5]])
        assert boxes.tensor.dtype == torch.float32 and isinstance(boxes, Boxes)
        assert RotatedBoxes(torch.empty(0)).tensor.shape == (0, 5)
        assert RotatedBoxes(torch.zeros(2, 5, dtype=torch.float64)).tensor.dtype == torch.float32
        with pytest.raises(ValueError, match=r"\(N, 5\).*\(3, 4\)"):
            RotatedBoxes(torch.zeros(3, 4))

    def test_area_and_nonempty(self):
        tensor = random_rotated(10, 0)
        torch.testing.assert_close(RotatedBoxes(tensor).area(), tensor[:, 2] * tensor[:, 3])
        boxes = RotatedBoxes(torch.tensor([[0, 0, 1, 1, 30], [0, 0, 0, 2, 0], [0, 0, 2, 0.5, 9]]))
        assert boxes.nonempty().tolist() == [True, False, True]
        assert boxes.nonempty(threshold=0.6).tolist() == [True, False, False]

    def test_normalize_angles(self):
        tensor = random_rotated(50, 1, angle_range=2000.0)
        tensor[0, 4], tensor[1, 4], tensor[2, 4] = 180.0, -180.0, 540.0
        boxes = RotatedBoxes(tensor.clone())
        boxes.normalize_angles()
        angles = boxes.tensor[:, 4]
        assert bool(((angles >= -180) & (angles < 180)).all())
        turns = (tensor[:, 4] - angles) / 360.0
        torch.testing.assert_close(turns, turns.round(), atol=1e-4, rtol=0)
        assert angles[:3].tolist() == [-180.0, -180.0, -180.0]

    def test_clip(self):
        tensor = torch.tensor(
            [
                [5.0, 5.0, 20.0, 6.0, 0.5],  # nearly horizontal, sticks out left
                [95.0, 50.0, 20.0, 200.0, -0.9],  # nearly horizontal, sticks out right/top/bottom
                [5.0, 5.0, 20.0, 6.0, 30.0],  # tilted: left alone
                [50.0, 50.0, 10.0, 10.0, 360.2],  # normalized to 0.2, inside: unchanged
            ]
        )
        boxes = RotatedBoxes(tensor.clone())
        boxes.clip((100, 100), clip_angle_threshold=1.0)
        out = boxes.tensor
        # reference: clip the axis-aligned box of the same center and size
        for i in (0, 1):
            center, size = tensor[i, 0:2], tensor[i, 2:4]
            clipped = Boxes(torch.cat([center - size / 2, center + size / 2])[None])
            clipped.clip((100, 100))
            expected = BoxMode.convert(clipped.tensor, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
            expected[:, :2] += expected[:, 2:] / 2
            torch.testing.assert_close(out[i, :4], expected[0])
            torch.testing.assert_close(out[i, 4], tensor[i, 4])
        assert torch.equal(out[2], tensor[2])
        expected_unchanged = torch.tensor([50.0, 50.0, 10.0, 10.0, 0.2])
        torch.testing.assert_close(out[3], expected_unchanged, atol=1e-4, rtol=0)
        assert bool((out[:, 2:4] <= tensor[:, 2:4]).all())

    def test_inside_box_vs_corners(self):
        tensor = random_rotated(60, 2)
        h, w, t = 90, 110, 2
        expected = []
        for box in tensor.tolist():
            xs, ys = zip(*rotated_corners(box))
            expected.append(min(xs) >= -t and min(ys) >= -t and max(xs) < w + t and max(ys) < h + t)
        assert RotatedBoxes(tensor).inside_box((h, w), boundary_threshold=t).tolist() == expected
        assert any(expected) and not all(expected)

    def test_get_centers(self):
        tensor = random_rotated(4, 3)
        assert torch.equal(RotatedBoxes(tensor).get_centers(), tensor[:, :2])

    @pytest.mark.parametrize("scale_x,scale_y", [(2.0, 2.0), (0.5, 1.5), (3.0, 0.7)])
    def test_scale_vs_scaled_corners(self, scale_x, scale_y):
        tensor = random_rotated(20, 4).double()
        tensor[0, 4], tensor[1, 4] = 90.0, 0.0
        boxes = RotatedBoxes(tensor.clone())
        boxes.scale(scale_x, scale_y)
        out = boxes.tensor.double()
        for before, after in zip(tensor.tolist(), out.tolist()):
            a, b, _, d = [(x * scale_x, y * scale_y) for x, y in rotated_corners(before)]
            width_axis = (b[0] - a[0], b[1] - a[1])
            height_axis = (d[0] - a[0], d[1] - a[1])
            assert after[0] == pytest.approx(before[0] * scale_x, rel=1e-5)
            assert after[1] == pytest.approx(before[1] * scale_y, rel=1e-5)
            assert after[2] == pytest.approx(math.hypot(*width_axis), rel=1e-4)
            assert after[3] == pytest.approx(math.hypot(*height_axis), rel=1e-4)
            # the angle is the direction of the scaled height axis: (sin, cos) * h
            expected_angle = math.degrees(math.atan2(height_axis[0], height_axis[1]))
            assert after[4] == pytest.approx(expected_angle, abs=1e-3)

    def test_indexing_cat_clone(self):
        tensor = random_rotated(5, 5)
        boxes = RotatedBoxes(tensor)
        assert isinstance(boxes[1], RotatedBoxes) and boxes[1].tensor.shape == (1, 5)
        keep = torch.tensor([True, False, True, False, True])
        assert torch.equal(boxes[keep].tensor, tensor[::2])
        joined = RotatedBoxes.cat([boxes[:2], boxes[2:]])
        assert isinstance(joined, RotatedBoxes) and torch.equal(joined.tensor, tensor)
        assert RotatedBoxes.cat([]).tensor.shape == (0, 5)
        with pytest.raises(TypeError, match="Boxes"):
            RotatedBoxes.cat([boxes, Boxes(torch.zeros(1, 4))])
        copy = boxes.clone()
        assert isinstance(copy, RotatedBoxes) and copy.tensor.data_ptr() != tensor.data_ptr()
        assert isinstance(boxes.to("cpu"), RotatedBoxes)
        assert repr(boxes).startswith("RotatedBoxes(")
        assert len(list(boxes)) == 5 and list(boxes)[0].shape == (5,)


@pytest.mark.skipif(not rotated_iou_op_built(), reason="detzoo::box_iou_rotated not built yet")
class TestRotatedIoU:
    def test_vs_polygon_clipping(self):
        a, b = random_rotated(12, 10), random_rotated(9, 11)
        b[:4] = a[:4] + torch.tensor([1.0, -1.0, 2.0, 0.5, 10.0])  # overlapping pairs
        iou = pairwise_iou_rotated(RotatedBoxes(a), RotatedBoxes(b))
        expected = [[brute_rotated_iou(p, q) for q in b.tolist()] for p in a.tolist()]
        torch.testing.assert_close(iou, torch.tensor(expected), atol=1e-4, rtol=1e-3)

    def test_axis_aligned_matches_torchvision(self):
        xyxy1, xyxy2 = torch.tensor([[0.0, 0, 10, 10], [5, 5, 15, 20]]), torch.tensor(
            [[2.0, 3, 12, 8], [0, 0, 10, 10], [20, 20, 30, 30]]
        )

        def to_rotated(xyxy):
            return RotatedBoxes(
                torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2],
                           torch.zeros(len(xyxy), 1)], dim=1)
            )

        iou = pairwise_iou_rotated(to_rotated(xyxy1), to_rotated(xyxy2))
        torch.testing.assert_close(iou, box_iou(xyxy1, xyxy2), atol=1e-5, rtol=0)

    def test_empty(self):
        boxes = RotatedBoxes(random_rotated(3, 12))
        assert pairwise_iou_rotated(boxes, RotatedBoxes(torch.zeros(0, 5))).shape == (3, 0)
