import json
import math

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from detzoo.structures import (
    Boxes,
    BoxMode,
    matched_pairwise_iou,
    pairwise_intersection,
    pairwise_ioa,
    pairwise_iou,
    pairwise_point_box_distance,
)


def random_boxes(n, seed, size=100.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 2 + 0.5
    return torch.cat([xy, xy + wh], dim=1)


def rotated_corners(box):
    """The 4 corners of an XYWHA box, rotating corner offsets counter-clockwise on screen."""
    xc, yc, w, h, a = [float(v) for v in box]
    t = math.radians(a)
    corners = []
    for dx, dy in [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]:
        corners.append((xc + math.cos(t) * dx + math.sin(t) * dy,
                        yc - math.sin(t) * dx + math.cos(t) * dy))
    return corners


def brute_intersection(a, b):
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


def brute_area(b):
    return (b[2] - b[0]) * (b[3] - b[1])


# ---------------------------------------------------------------- BoxMode


class TestBoxMode:
    @pytest.mark.parametrize("container", [list, tuple])
    def test_single_box_round_trip(self, container):
        box = container([5.0, 6.0, 10.0, 12.0])
        xywh = BoxMode.convert(box, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
        assert isinstance(xywh, container) and isinstance(xywh[0], float)
        assert xywh == container([5.0, 6.0, 5.0, 6.0])
        assert BoxMode.convert(xywh, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) == box

    def test_single_boxes_match_numpy(self):
        rng = np.random.default_rng(0)
        for row in rng.uniform(-50, 500, (20, 4)):
            box = [float(v) for v in row]
            np.testing.assert_allclose(BoxMode.convert(box, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS),
                                       np.concatenate([row[:2], row[:2] + row[2:]]), rtol=0, atol=1e-12)
            np.testing.assert_allclose(BoxMode.convert(tuple(box), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS),
                                       np.concatenate([row[:2], row[2:] - row[:2]]), rtol=0, atol=1e-12)
        with pytest.raises((TypeError, ValueError)):
            BoxMode.convert(["1", "2", "3", "4"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)

    def test_integer_modes_accepted(self):
        assert BoxMode.convert([1, 2, 3, 4], 0, 1) == [1, 2, 2, 2]

    def test_same_mode_returns_input(self):
        box = np.zeros((2, 4))
        assert BoxMode.convert(box, BoxMode.XYXY_ABS, BoxMode.XYXY_ABS) is box

    @pytest.mark.parametrize("dtype", [np.int64, np.float32, np.float64])
    def test_numpy_round_trip_keeps_dtype_and_input(self, dtype):
        box = np.asarray([[5, 5, 10, 10], [1, 1, 2, 3]], dtype=dtype)
        original = box.copy()
        xywh = BoxMode.convert(box, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
        assert xywh.dtype == box.dtype and xywh.shape == box.shape
        np.testing.assert_array_equal(xywh, [[5, 5, 5, 5], [1, 1, 1, 2]])
        np.testing.assert_array_equal(box, original)
        back = BoxMode.convert(xywh, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
        np.testing.assert_array_equal(back, box)

    @pytest.mark.parametrize("dtype", [torch.int64, torch.float32, torch.float64])
    def test_tensor_round_trip_keeps_dtype_and_input(self, dtype):
        box = torch.tensor([[5, 5, 10, 10], [1, 1, 2, 3]], dtype=dtype)
        original = box.clone()
        xywh = BoxMode.convert(box, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
        assert xywh.dtype == dtype
        assert xywh.tolist() == [[5, 5, 5, 5], [1, 1, 1, 2]]
        assert torch.equal(box, original)
        assert torch.equal(BoxMode.convert(xywh, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS), box)

    def test_non_contiguous_tensor(self):
        big = random_boxes(6, 0)
        box = big.t().contiguous().t()[::2]
        assert not box.is_contiguous()
        xywh = BoxMode.convert(box, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
        torch.testing.assert_close(xywh[:, 2:], box[:, 2:] - box[:, :2])

    def test_empty(self):
        out = BoxMode.convert(torch.zeros(0, 4), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
        assert out.shape == (0, 4)
        out = BoxMode.convert(np.zeros((0, 5)), BoxMode.XYWHA_ABS, BoxMode.XYXY_ABS)
        assert out.shape == (0, 4)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_xywha_to_xyxy_vs_corners(self, dtype):
        g = torch.Generator().manual_seed(1)
        boxes = torch.cat(
            [torch.rand(20, 4, generator=g) * 50 + 1, torch.rand(20, 1, generator=g) * 720 - 360],
            dim=1,
        ).to(dtype)
        boxes[0] = torch.tensor([50, 50, 30, 20, 90], dtype=dtype)
        boxes[1] = torch.tensor([1, 1, math.sqrt(2), math.sqrt(2), -45], dtype=dtype)
        out = BoxMode.convert(boxes, BoxMode.XYWHA_ABS, BoxMode.XYXY_ABS)
        assert out.dtype == dtype
        expected = []
        for box in boxes.tolist():
            xs, ys = zip(*rotated_corners(box))
            expected.append([min(xs), min(ys), max(xs), max(ys)])
        torch.testing.assert_close(out, torch.tensor(expected, dtype=dtype), atol=1e-4, rtol=0)
        torch.testing.assert_close(out[0], torch.tensor([40, 35, 60, 65], dtype=dtype))

    def test_xywha_list(self):
        assert BoxMode.convert((50, 50, 30, 20, 0), BoxMode.XYWHA_ABS, BoxMode.XYXY_ABS) == (
            35, 40, 65, 60,
        )

    def test_xywh_xywha_round_trip(self):
        box = np.asarray([[30, 40, 70, 60], [-1, -1, 2, 2]], dtype=np.float32)
        xywha = BoxMode.convert(box, BoxMode.XYWH_ABS, BoxMode.XYWHA_ABS)
        assert xywha.dtype == np.float32
        np.testing.assert_allclose(xywha, [[65, 70, 70, 60, 0], [0, 0, 2, 2, 0]])
        np.testing.assert_allclose(BoxMode.convert(xywha, BoxMode.XYWHA_ABS, BoxMode.XYWH_ABS), box)

    def test_xyxy_xywha_round_trip(self):
        box = random_boxes(10, 2).double()
        xywha = BoxMode.convert(box, BoxMode.XYXY_ABS, BoxMode.XYWHA_ABS)
        assert xywha.shape == (10, 5) and bool((xywha[:, 4] == 0).all())
        torch.testing.assert_close(xywha[:, :2], (box[:, :2] + box[:, 2:]) / 2)
        torch.testing.assert_close(BoxMode.convert(xywha, BoxMode.XYWHA_ABS, BoxMode.XYXY_ABS), box)

    def test_bad_inputs(self):
        with pytest.raises(ValueError, match="4 numbers"):
            BoxMode.convert([[1, 2, 3, 4]], BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
        with pytest.raises(ValueError, match="5 numbers"):
            BoxMode.convert([1, 2, 3, 4], BoxMode.XYWHA_ABS, BoxMode.XYXY_ABS)
        with pytest.raises(ValueError, match=r"\(N, 5\)"):
            BoxMode.convert(torch.zeros(3, 4), BoxMode.XYWHA_ABS, BoxMode.XYXY_ABS)
        with pytest.raises(ValueError, match=r"\(N, 4\)"):
            BoxMode.convert(torch.zeros(4), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
        with pytest.raises(TypeError, match="dict"):
            BoxMode.convert({"x": 1}, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
        with pytest.raises(NotImplementedError, match="relative"):
            BoxMode.convert([0, 0, 1, 1], BoxMode.XYXY_REL, BoxMode.XYXY_ABS)
        with pytest.raises(ValueError):
            BoxMode.convert([0, 0, 1, 1], 7, BoxMode.XYXY_ABS)

    def test_json(self):
        payload = json.dumps({"box_mode": BoxMode.XYWH_REL})
        assert BoxMode(json.loads(payload)["box_mode"]) == BoxMode.XYWH_REL


# ---------------------------------------------------------------- Boxes


class TestBoxes:
    def test_construction(self):
        assert Boxes([[0, 0, 1, 2]]).tensor.dtype == torch.float32
        assert Boxes(np.zeros((3, 4))).tensor.shape == (3, 4)
        assert Boxes(torch.zeros(2, 4, dtype=torch.float16)).tensor.dtype == torch.float32
        assert Boxes(torch.empty(0)).tensor.shape == (0, 4)
        assert Boxes([]).tensor.shape == (0, 4)
        with pytest.raises(ValueError, match=r"\(N, 4\).*\(3, 5\)"):
            Boxes(torch.zeros(3, 5))
        with pytest.raises(ValueError, match=r"\(N, 4\)"):
            Boxes(torch.zeros(4))

    def test_area_vs_brute_force(self):
        boxes = random_boxes(30, 3)
        expected = torch.tensor([brute_area(b) for b in boxes.tolist()])
        torch.testing.assert_close(Boxes(boxes).area(), expected)

    def test_clone_and_to(self):
        boxes = Boxes(random_boxes(4, 4))
        copy = boxes.clone()
        copy.tensor += 1
        assert not torch.equal(copy.tensor, boxes.tensor)
        moved = boxes.to("cpu")
        assert isinstance(moved, Boxes) and moved.device.type == "cpu"

    def test_clip(self):
        boxes = Boxes(torch.tensor([[-5.0, -3.0, 120.0, 40.0], [10.0, 90.0, 20.0, 130.0]]))
        boxes.clip((100, 110))
        assert boxes.tensor.tolist() == [[0, 0, 110, 40], [10, 90, 20, 100]]
        bad = Boxes(torch.tensor([[0.0, 0.0, float("nan"), 1.0], [0, 0, 1, 1]]))
        with pytest.raises(ValueError, match="1 of 2 boxes"):
            bad.clip((10, 10))

    def test_nonempty(self):
        boxes = Boxes(torch.tensor([[0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 2, 0.5], [3, 3, 2, 5]]))
        assert boxes.nonempty().tolist() == [True, False, True, False]
        assert boxes.nonempty(threshold=0.6).tolist() == [True, False, False, False]

    def test_getitem(self):
        tensor = random_boxes(6, 5)
        boxes = Boxes(tensor)
        assert boxes[2].tensor.shape == (1, 4) and torch.equal(boxes[2].tensor[0], tensor[2])
        assert torch.equal(boxes[-1].tensor[0], tensor[-1])
        assert torch.equal(boxes[1:4].tensor, tensor[1:4])
        mask = torch.tensor([True, False, True, False, False, True])
        assert torch.equal(boxes[mask].tensor, tensor[mask])
        index = torch.tensor([5, 0, 0])
        assert torch.equal(boxes[index].tensor, tensor[index])
        with pytest.raises(IndexError, match="not a matrix"):
            boxes[0, 1]

    def test_len_iter_repr_device(self):
        tensor = random_boxes(3, 6)
        boxes = Boxes(tensor)
        assert len(boxes) == 3
        rows = list(boxes)
        assert len(rows) == 3 and torch.equal(rows[1], tensor[1])
        assert repr(boxes).startswith("Boxes(tensor(")
        assert boxes.device == torch.device("cpu")

    def test_inside_box_vs_brute_force(self):
        boxes = random_boxes(40, 7, size=120.0) - 10
        h, w, t = 100, 90, 3
        expected = [
            b[0] >= -t and b[1] >= -t and b[2] < w + t and b[3] < h + t for b in boxes.tolist()
        ]
        assert Boxes(boxes).inside_box((h, w), boundary_threshold=t).tolist() == expected

    def test_centers_and_scale(self):
        boxes = Boxes(torch.tensor([[2.0, 4.0, 6.0, 10.0]]))
        assert boxes.get_centers().tolist() == [[4.0, 7.0]]
        boxes.scale(0.5, 2.0)
        assert boxes.tensor.tolist() == [[1.0, 8.0, 3.0, 20.0]]

    def test_cat(self):
        a, b = Boxes(random_boxes(2, 8)), Boxes(random_boxes(3, 9))
        joined = Boxes.cat([a, b])
        assert torch.equal(joined.tensor, torch.cat([a.tensor, b.tensor]))
        joined.tensor += 1  # no shared storage with the inputs
        assert not torch.equal(joined.tensor[:2], a.tensor)
        assert Boxes.cat([]).tensor.shape == (0, 4)
        with pytest.raises(TypeError, match="Tensor"):
            Boxes.cat([a, torch.zeros(1, 4)])
        with pytest.raises(TypeError, match="list or tuple"):
            Boxes.cat(a)


# ---------------------------------------------------------------- pairwise functions


class TestPairwise:
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_iou_vs_torchvision(self, seed):
        a, b = random_boxes(17, seed), random_boxes(23, seed + 100)
        torch.testing.assert_close(pairwise_iou(Boxes(a), Boxes(b)), box_iou(a, b))

    def test_iou_non_contiguous(self):
        a = random_boxes(8, 3).t().contiguous().t()
        b = random_boxes(12, 4)[::2]
        assert not a.is_contiguous() and not b.is_contiguous()
        torch.testing.assert_close(pairwise_iou(Boxes(a), Boxes(b)), box_iou(a, b))

    def test_iou_exact_values(self):
        a = Boxes(torch.tensor([[0.0, 0.0, 2.0, 1.0]]))
        b = Boxes(torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 1.5, 1.5], [2.0, 0.0, 3.0, 1.0]]))
        # exactly 0.5 (a threshold value), 0.5 / 2.5, and touching boxes give 0
        assert pairwise_iou(a, b).tolist() == torch.tensor([[0.5, 0.5 / 2.5, 0.0]]).tolist()

    def test_iou_empty_boxes_give_zero(self):
        a = Boxes(torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]]))
        iou = pairwise_iou(a, a)
        assert not torch.isnan(iou).any()
        assert iou.tolist() == [[0.0, 0.0], [0.0, 1.0]]

    def test_empty_inputs(self):
        a, none = Boxes(random_boxes(3, 0)), Boxes(torch.zeros(0, 4))
        assert pairwise_iou(a, none).shape == (3, 0)
        assert pairwise_iou(none, a).shape == (0, 3)
        assert pairwise_ioa(none, a).shape == (0, 3)
        assert pairwise_intersection(a, none).shape == (3, 0)
        assert matched_pairwise_iou(none, none).shape == (0,)
        assert pairwise_point_box_distance(torch.zeros(0, 2), a).shape == (0, 3, 4)

    def test_intersection_and_ioa_vs_brute_force(self):
        a, b = random_boxes(9, 11), random_boxes(7, 12)
        inter = [[brute_intersection(p, q) for q in b.tolist()] for p in a.tolist()]
        ioa = [[brute_intersection(p, q) / brute_area(q) for q in b.tolist()] for p in a.tolist()]
        torch.testing.assert_close(pairwise_intersection(Boxes(a), Boxes(b)), torch.tensor(inter))
        torch.testing.assert_close(pairwise_ioa(Boxes(a), Boxes(b)), torch.tensor(ioa))

    def test_point_box_distance_vs_brute_force(self):
        g = torch.Generator().manual_seed(13)
        points = torch.rand(6, 2, generator=g) * 100
        boxes = random_boxes(5, 14)
        expected = [
            [[x - b[0], y - b[1], b[2] - x, b[3] - y] for b in boxes.tolist()]
            for x, y in points.tolist()
        ]
        out = pairwise_point_box_distance(points, Boxes(boxes))
        torch.testing.assert_close(out, torch.tensor(expected))
        inside = [[b[0] < x < b[2] and b[1] < y < b[3] for b in boxes.tolist()]
                  for x, y in points.tolist()]
        assert (out > 0).all(dim=2).tolist() == inside
        with pytest.raises(ValueError, match=r"\(N, 2\)"):
            pairwise_point_box_distance(torch.zeros(3), Boxes(boxes))

    def test_matched_iou_is_diagonal(self):
        a, b = random_boxes(10, 15), random_boxes(10, 16)
        b[:5] = a[:5] + 1.0  # make some pairs overlap
        expected = torch.diagonal(box_iou(a, b))
        torch.testing.assert_close(matched_pairwise_iou(Boxes(a), Boxes(b)), expected)
        with pytest.raises(ValueError, match="10 and 3"):
            matched_pairwise_iou(Boxes(a), Boxes(b[:3]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    a, b = random_boxes(20, 30), random_boxes(15, 31)
    ca, cb = Boxes(a).to("cuda"), Boxes(b).to("cuda")
    assert ca.device.type == "cuda"
    torch.testing.assert_close(pairwise_iou(ca, cb).cpu(), pairwise_iou(Boxes(a), Boxes(b)))
    torch.testing.assert_close(pairwise_ioa(ca, cb).cpu(), pairwise_ioa(Boxes(a), Boxes(b)))
    converted = BoxMode.convert(a.cuda(), BoxMode.XYXY_ABS, BoxMode.XYWHA_ABS)
    assert converted.device.type == "cuda"
    torch.testing.assert_close(
        converted.cpu(), BoxMode.convert(a, BoxMode.XYXY_ABS, BoxMode.XYWHA_ABS)
    )
