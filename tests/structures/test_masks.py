import math

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detzoo.structures import (
    BitMasks,
    Boxes,
    PolygonMasks,
    ROIMasks,
    polygon_area,
    polygons_to_bitmask,
    rasterize_polygons_within_box,
)

# ---------------------------------------------------------------- references


def shoelace(polygon):
    xs, ys = polygon[0::2], polygon[1::2]
    n = len(xs)
    return 0.5 * abs(sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n)))


def coco_rasterize(polygons, height, width):
    """pycocotools called directly: the union of the polygons."""
    rles = mask_util.frPyObjects([list(map(float, p)) for p in polygons], height, width)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def rectangle(x0, y0, x1, y1):
    return np.array([x0, y0, x1, y0, x1, y1, x0, y1], dtype=np.float64)


def star(cx, cy, r_outer, r_inner, points=5, phase=0.0):
    coords = []
    for k in range(2 * points):
        r = r_outer if k % 2 == 0 else r_inner
        t = phase + math.pi * k / points
        coords += [cx + r * math.cos(t), cy + r * math.sin(t)]
    return np.array(coords)


def brute_roi_align(image, box, size):
    """torchvision's ROIAlign (aligned=True, sampling_ratio=0, scale 1) as plain loops."""
    height, width = image.shape
    x1, y1, x2, y2 = [float(v) for v in box]
    start_x, start_y = x1 - 0.5, y1 - 0.5
    bin_w, bin_h = (x2 - x1) / size, (y2 - y1) / size
    grid_w, grid_h = math.ceil((x2 - x1) / size), math.ceil((y2 - y1) / size)
    count = max(grid_w * grid_h, 1)

    def bilinear(y, x):
        if y < -1.0 or y > height or x < -1.0 or x > width:
            return 0.0
        y, x = max(y, 0.0), max(x, 0.0)
        y_low, x_low = int(y), int(x)
        if y_low >= height - 1:
            y_low = y_high = height - 1
            y = float(y_low)
        else:
            y_high = y_low + 1
        if x_low >= width - 1:
            x_low = x_high = width - 1
            x = float(x_low)
        else:
            x_high = x_low + 1
        ly, lx = y - y_low, x - x_low
        return (
            (1 - ly) * (1 - lx) * image[y_low, x_low]
            + (1 - ly) * lx * image[y_low, x_high]
            + ly * (1 - lx) * image[y_high, x_low]
            + ly * lx * image[y_high, x_high]
        )

    out = np.zeros((size, size))
    for ph in range(size):
        for pw in range(size):
            total = 0.0
            for iy in range(grid_h):
                y = start_y + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                for ix in range(grid_w):
                    x = start_x + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                    total += bilinear(y, x)
            out[ph, pw] = total / count
    return out


def random_bitmasks(n, height, width, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, height, width, generator=g) > 0.5


# ---------------------------------------------------------------- polygon helpers


def test_polygon_area_vs_loop_and_coco():
    polygon = star(40, 30, 25, 10)
    assert polygon_area(polygon[0::2], polygon[1::2]) == pytest.approx(shoelace(polygon))
    rle = mask_util.merge(mask_util.frPyObjects([polygon.tolist()], 80, 80))
    assert polygon_area(polygon[0::2], polygon[1::2]) == pytest.approx(
        float(mask_util.area(rle)), rel=0.05
    )


def test_polygons_to_bitmask_vs_coco():
    polygons = [star(20, 15, 12, 5), rectangle(25.5, 3.2, 38.7, 20.1), star(30, 20, 6, 3, 7, 0.3)]
    mask = polygons_to_bitmask(polygons, 30, 45)
    assert mask.dtype == bool and mask.shape == (30, 45)
    np.testing.assert_array_equal(mask, coco_rasterize(polygons, 30, 45))


def test_polygons_to_bitmask_integer_rectangle_is_exact():
    mask = polygons_to_bitmask([rectangle(1, 2, 6, 5)], 8, 9)
    expected = np.zeros((8, 9), dtype=bool)
    expected[2:5, 1:6] = True  # pixel (x, y) covers [x, x + 1) x [y, y + 1)
    np.testing.assert_array_equal(mask, expected)


def test_polygons_to_bitmask_empty_and_bad():
    assert not polygons_to_bitmask([], 4, 5).any()
    assert polygons_to_bitmask([], 4, 5).shape == (4, 5)
    with pytest.raises(ValueError, match="from 4 coordinates"):
        polygons_to_bitmask([np.array([0.0, 0, 1, 1])], 4, 4)
    with pytest.raises(ValueError, match="from 7 coordinates"):
        polygons_to_bitmask([np.arange(7.0)], 4, 4)


def test_rasterize_polygons_within_box_vs_manual_transform():
    polygons = [star(30, 25, 14, 6), rectangle(40, 20, 48, 30)]
    originals = [p.copy() for p in polygons]
    box = np.array([18.3, 12.9, 49.0, 36.4], dtype=np.float32)
    size = 28
    transformed = []
    for p in polygons:
        q = []
        for x, y in zip(p[0::2], p[1::2]):
            q += [(x - box[0]) * size / (box[2] - box[0]), (y - box[1]) * size / (box[3] - box[1])]
        transformed.append(np.array(q))
    mask = rasterize_polygons_within_box(polygons, box, size)
    assert mask.dtype == torch.bool and mask.shape == (size, size)
    expected = coco_rasterize(transformed, size, size)
    assert (mask.numpy() != expected).sum() <= 2  # float rounding at edges only
    for p, original in zip(polygons, originals):
        np.testing.assert_array_equal(p, original)


def test_rasterize_within_box_of_the_polygon_itself_is_full():
    mask = rasterize_polygons_within_box([rectangle(3.5, 7.25, 11.5, 9.25)],
                                         np.array([3.5, 7.25, 11.5, 9.25]), 14)
    assert bool(mask.all())


# ---------------------------------------------------------------- PolygonMasks


def make_polygon_masks():
    return PolygonMasks(
        [
            [star(20, 15, 12, 5)],
            [rectangle(2, 3, 10, 12), rectangle(12, 1, 15, 4)],
            [],
            [torch.tensor([5.0, 5.0, 9.0, 5.0, 7.0, 9.0]), [30, 30, 34, 30, 32, 36]],
        ]
    )


class TestPolygonMasks:
    def test_conversion(self):
        masks = make_polygon_masks()
        assert len(masks) == 4 and repr(masks) == "PolygonMasks(num_instances=4)"
        for instance in masks:
            for polygon in instance:
                assert isinstance(polygon, np.ndarray) and polygon.dtype == np.float64
        assert masks.to("cpu") is masks and masks.device == torch.device("cpu")

    def test_validation(self):
        with pytest.raises(ValueError, match="expected a list.*got tuple"):
            PolygonMasks(([rectangle(0, 0, 1, 1)],))
        with pytest.raises(ValueError, match="instance 1 must be a list of polygons, got ndarray"):
            PolygonMasks([[rectangle(0, 0, 1, 1)], rectangle(0, 0, 1, 1)])
        with pytest.raises(ValueError, match="at least 3 points.*from 4 coordinates"):
            PolygonMasks([[np.array([0.0, 0, 1, 1])]])
        with pytest.raises(ValueError, match="instance 0.*from 9 coordinates"):
            PolygonMasks([[np.arange(9.0)]])
        with pytest.raises(ValueError, match=r"flat vector.*shape \(4, 2\)"):
            PolygonMasks([[np.zeros((4, 2))]])

    def test_bounding_boxes_vs_brute_force(self):
        masks = make_polygon_masks()
        expected = []
        for instance in masks.polygons:
            xs = [x for p in instance for x in p[0::2]]
            ys = [y for p in instance for y in p[1::2]]
            # Detectron2's convention: the max corner starts at 0, an empty instance at inf
            expected.append([min(xs, default=math.inf), min(ys, default=math.inf),
                             max(xs + [0.0]), max(ys + [0.0])])
        boxes = masks.get_bounding_boxes()
        assert isinstance(boxes, Boxes)
        torch.testing.assert_close(boxes.tensor, torch.tensor(expected, dtype=torch.float32))
        assert PolygonMasks([]).get_bounding_boxes().tensor.shape == (0, 4)

    def test_area_vs_loop(self):
        masks = make_polygon_masks()
        expected = [sum(shoelace(p) for p in instance) for instance in masks.polygons]
        area = masks.area()
        assert area.dtype == torch.float64
        torch.testing.assert_close(area, torch.tensor(expected, dtype=torch.float64))
        assert PolygonMasks([]).area().shape == (0,)

    def test_area_vs_coco(self):
        polygon = star(50, 50, 40, 20, 6, 0.1)
        area = PolygonMasks([[polygon]]).area()[0].item()
        rle = mask_util.merge(mask_util.frPyObjects([polygon.tolist()], 100, 100))
        coco = float(mask_util.area(rle))
        assert area == pytest.approx(coco, rel=0.03)

    def test_nonempty(self):
        assert make_polygon_masks().nonempty().tolist() == [True, True, False, True]

    @pytest.mark.parametrize(
        "item,expected",
        [
            (1, [1]),
            (-1, [3]),
            (slice(1, 3), [1, 2]),
            ([3, 0, 0], [3, 0, 0]),
            (torch.tensor([True, False, False, True]), [0, 3]),
            (torch.tensor([2, 1], dtype=torch.int32), [2, 1]),
            (np.array([0, 2]), [0, 2]),
            (np.array([False, True, True, False]), [1, 2]),
        ],
    )
    def test_getitem(self, item, expected):
        masks = make_polygon_masks()
        selected = masks[item]
        assert isinstance(selected, PolygonMasks)
        assert len(selected) == len(expected)
        for got, i in zip(selected.polygons, expected):
            assert len(got) == len(masks.polygons[i])
            for a, b in zip(got, masks.polygons[i]):
                np.testing.assert_array_equal(a, b)

    def test_getitem_errors(self):
        masks = make_polygon_masks()
        with pytest.raises(ValueError, match="dtype=torch.float32"):
            masks[torch.tensor([0.0, 1.0])]
        with pytest.raises(IndexError, match="bool mask of length 2 for 4"):
            masks[torch.tensor([True, False])]
        with pytest.raises(IndexError, match="1-D"):
            masks[torch.zeros(2, 2, dtype=torch.long)]
        with pytest.raises(TypeError, match="float"):
            masks[1.0]

    def test_cat(self):
        a, b = make_polygon_masks(), make_polygon_masks()[1:3]
        joined = PolygonMasks.cat([a, b])
        assert len(joined) == 6 and len(joined.polygons[4]) == 2 and joined.polygons[5] == []
        np.testing.assert_array_equal(joined.polygons[4][0], a.polygons[1][0])
        with pytest.raises(ValueError, match="non-empty"):
            PolygonMasks.cat([])
        with pytest.raises(TypeError, match="element 1 is a BitMasks"):
            PolygonMasks.cat([a, BitMasks(torch.zeros(1, 2, 2))])

    def test_crop_and_resize_vs_per_instance(self):
        masks = make_polygon_masks()
        boxes = torch.tensor(
            [[8.0, 3.0, 32.0, 27.0], [1.0, 0.5, 16.0, 13.0], [0.0, 0.0, 5.0, 5.0],
             [4.0, 4.0, 35.0, 37.0]]
        )
        out = masks.crop_and_resize(boxes, 14)
        assert out.shape == (4, 14, 14) and out.dtype == torch.bool
        for i, (instance, box) in enumerate(zip(masks.polygons, boxes.numpy())):
            expected = rasterize_polygons_within_box(instance, box, 14)
            assert torch.equal(out[i], expected)
        assert not out[2].any()  # the instance without polygons
        empty = PolygonMasks([]).crop_and_resize(torch.zeros(0, 4), 14)
        assert empty.shape == (0, 14, 14) and empty.dtype == torch.bool
        with pytest.raises(ValueError, match=r"shape \(4, 4\).*\(3, 4\)"):
            masks.crop_and_resize(boxes[:3], 14)


# ---------------------------------------------------------------- BitMasks


class TestBitMasks:
    def test_construction(self):
        masks = BitMasks(np.ones((2, 3, 4)))
        assert masks.tensor.dtype == torch.bool and masks.image_size == (3, 4)
        assert BitMasks(torch.zeros(0, 5, 6)).image_size == (5, 6)
        with pytest.raises(ValueError, match=r"\(N, H, W\).*\(3, 4\)"):
            BitMasks(torch.zeros(3, 4))

    def test_getitem_len_iter(self):
        tensor = random_bitmasks(5, 6, 7, 0)
        masks = BitMasks(tensor)
        assert masks[2].tensor.shape == (1, 6, 7) and torch.equal(masks[2].tensor[0], tensor[2])
        assert torch.equal(masks[1:3].tensor, tensor[1:3])
        keep = torch.tensor([True, False, True, False, True])
        assert torch.equal(masks[keep].tensor, tensor[keep])
        assert torch.equal(masks[torch.tensor([4, 4])].tensor, tensor[[4, 4]])
        with pytest.raises(IndexError, match="not \\(N, H, W\\)"):
            masks[0, 1]
        assert len(masks) == 5 and len(list(masks)) == 5
        assert repr(masks) == "BitMasks(num_instances=5)"
        assert masks.to("cpu").device == torch.device("cpu")

    def test_nonempty_and_area(self):
        tensor = random_bitmasks(4, 5, 6, 1)
        tensor[2] = False
        masks = BitMasks(tensor)
        assert masks.nonempty().tolist() == [True, True, False, True]
        expected = [int(np.count_nonzero(m)) for m in tensor.numpy()]
        assert masks.area().tolist() == expected

    def test_from_polygon_masks(self):
        polygons = make_polygon_masks()
        masks = BitMasks.from_polygon_masks(polygons, 40, 45)
        assert masks.tensor.shape == (4, 40, 45)
        for i, instance in enumerate(polygons.polygons):
            expected = coco_rasterize(instance, 40, 45) if instance else np.zeros((40, 45), bool)
            np.testing.assert_array_equal(masks.tensor[i].numpy(), expected)
        same = BitMasks.from_polygon_masks(polygons.polygons, 40, 45)
        assert torch.equal(same.tensor, masks.tensor)
        assert BitMasks.from_polygon_masks([], 7, 8).tensor.shape == (0, 7, 8)

    def test_crop_and_resize_vs_brute_force(self):
        tensor = random_bitmasks(4, 16, 20, 2)
        boxes = torch.tensor(
            [[2.0, 1.5, 15.0, 12.0], [0.0, 0.0, 20.0, 16.0], [-3.0, 5.0, 7.3, 18.0],
             [10.2, 4.4, 10.9, 9.0]]
        )
        size = 6
        out = BitMasks(tensor).crop_and_resize(boxes, size)
        assert out.shape == (4, size, size) and out.dtype == torch.bool
        for i in range(4):
            soft = brute_roi_align(tensor[i].double().numpy(), boxes[i], size)
            decided = np.abs(soft - 0.5) > 1e-5  # values at the threshold are float rounding
            np.testing.assert_array_equal(out[i].numpy()[decided], (soft >= 0.5)[decided])

    def test_crop_and_resize_matches_polygons_inside(self):
        polygons = [[star(24, 20, 15, 7)], [rectangle(5, 6, 30, 33)]]
        bitmasks = BitMasks.from_polygon_masks(polygons, 40, 48)
        boxes = torch.tensor([[8.0, 4.0, 40.0, 36.0], [3.0, 4.0, 32.0, 35.0]])
        from_bits = bitmasks.crop_and_resize(boxes, 28)
        from_polygons = PolygonMasks(polygons).crop_and_resize(boxes, 28)
        disagreement = (from_bits != from_polygons).float().mean().item()
        assert disagreement < 0.05

    def test_crop_and_resize_edge_cases(self):
        masks = BitMasks(random_bitmasks(2, 8, 8, 3))
        assert masks.crop_and_resize(torch.zeros(2, 4, dtype=torch.float64), 4).shape == (2, 4, 4)
        empty = BitMasks(torch.zeros(0, 8, 8)).crop_and_resize(torch.zeros(0, 4), 5)
        assert empty.shape == (0, 5, 5)
        with pytest.raises(ValueError, match=r"shape \(2, 4\).*\(3, 4\)"):
            masks.crop_and_resize(torch.zeros(3, 4), 4)
        with pytest.raises(TypeError, match="Tensor"):
            masks.crop_and_resize(Boxes(torch.zeros(2, 4)), 4)

    def test_bounding_boxes_vs_brute_force(self):
        tensor = torch.zeros(4, 9, 11, dtype=torch.bool)
        tensor[0, 2:5, 3:8] = True
        tensor[1, 0, 0] = True
        tensor[1, 8, 10] = True
        tensor[3] = random_bitmasks(1, 9, 11, 4)[0]
        expected = []
        for m in tensor.numpy():
            ys, xs = np.nonzero(m)
            if len(xs) == 0:
                expected.append([0, 0, 0, 0])
            else:
                expected.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        boxes = BitMasks(tensor).get_bounding_boxes()
        assert isinstance(boxes, Boxes)
        assert boxes.tensor.tolist() == expected
        assert BitMasks(torch.zeros(0, 3, 3)).get_bounding_boxes().tensor.shape == (0, 4)
        assert BitMasks(torch.zeros(2, 0, 3)).get_bounding_boxes().tensor.tolist() == [[0] * 4] * 2

    def test_cat(self):
        a, b = BitMasks(random_bitmasks(2, 4, 5, 5)), BitMasks(random_bitmasks(1, 4, 5, 6))
        joined = BitMasks.cat([a, b])
        assert torch.equal(joined.tensor, torch.cat([a.tensor, b.tensor]))
        with pytest.raises(ValueError, match="non-empty"):
            BitMasks.cat([])
        with pytest.raises(TypeError, match="element 0 is a Tensor"):
            BitMasks.cat([a.tensor])

    def test_from_roi_masks_needs_boxes(self):
        with pytest.raises(TypeError, match="boxes"):
            BitMasks.from_roi_masks(ROIMasks(torch.zeros(1, 4, 4)), 10, 10)


# ---------------------------------------------------------------- ROIMasks


def brute_paste(mask, box, height, width, threshold):
    """Bilinear sample of the M x M mask at each image pixel center, zero outside."""
    size_y, size_x = mask.shape
    x0, y0, x1, y1 = [float(v) for v in box]
    out = np.zeros((height, width), dtype=bool)
    for y in range(height):
        for x in range(width):
            u = (x + 0.5 - x0) / (x1 - x0) * size_x - 0.5
            v = (y + 0.5 - y0) / (y1 - y0) * size_y - 0.5
            u0, v0 = math.floor(u), math.floor(v)
            value = 0.0
            for dv, wv in ((0, 1 - (v - v0)), (1, v - v0)):
                for du, wu in ((0, 1 - (u - u0)), (1, u - u0)):
                    yy, xx = v0 + dv, u0 + du
                    if 0 <= yy < size_y and 0 <= xx < size_x:
                        value += wv * wu * mask[yy, xx]
            out[y, x] = value >= threshold
    return out


class TestROIMasks:
    def test_basics(self):
        tensor = torch.rand(3, 5, 5)
        masks = ROIMasks(tensor)
        assert len(masks) == 3 and masks.device == torch.device("cpu")
        assert torch.equal(masks[1:].tensor, tensor[1:])
        assert torch.equal(masks[torch.tensor([True, False, True])].tensor, tensor[[0, 2]])
        assert repr(masks) == "ROIMasks(num_instances=3)"
        assert masks.to("cpu").tensor is not None
        with pytest.raises(ValueError, match="3 dimensions"):
            ROIMasks(torch.zeros(5, 5))
        with pytest.raises(ValueError, match="returns a tensor with shape"):
            masks[0]

    def test_to_bitmasks_vs_brute_force(self):
        g = torch.Generator().manual_seed(7)
        tensor = torch.rand(3, 7, 7, generator=g)
        boxes = torch.tensor(
            [[2.0, 3.0, 15.5, 12.0], [0.0, 0.0, 5.0, 5.0], [10.3, 1.2, 19.0, 17.7]]
        )
        for box_arg in (boxes, Boxes(boxes)):
            out = ROIMasks(tensor).to_bitmasks(box_arg, 18, 20, threshold=0.5)
            assert isinstance(out, BitMasks) and out.tensor.shape == (3, 18, 20)
            for i in range(3):
                expected = brute_paste(tensor[i].double().numpy(), boxes[i], 18, 20, 0.5)
                assert (out.tensor[i].numpy() != expected).sum() <= 2
        same = BitMasks.from_roi_masks(ROIMasks(tensor), 18, 20, boxes=boxes)
        assert torch.equal(same.tensor, out.tensor)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    tensor = random_bitmasks(3, 16, 20, 9)
    boxes = torch.tensor([[2.0, 1.5, 15.0, 12.0], [0.0, 0.0, 20.0, 16.0], [4.0, 5.0, 9.3, 14.0]])
    masks = BitMasks(tensor)
    on_gpu = masks.to("cuda")
    out = on_gpu.crop_and_resize(boxes.cuda(), 7)
    assert out.device.type == "cuda"
    assert (out.cpu() != masks.crop_and_resize(boxes, 7)).sum() <= 2
    gpu_boxes = on_gpu.get_bounding_boxes()
    assert gpu_boxes.device.type == "cuda"
    assert torch.equal(gpu_boxes.tensor.cpu(), masks.get_bounding_boxes().tensor)
    polygons = make_polygon_masks()
    from_polygons = polygons.crop_and_resize(torch.zeros(4, 4).cuda() + torch.arange(4.0).cuda(), 5)
    assert from_polygons.device.type == "cuda"
