import math

import pytest
import torch
from torch.nn import functional as F

from detzoo.structures import Keypoints, heatmaps_to_keypoints


def random_keypoints_in_boxes(boxes, k, seed):
    g = torch.Generator().manual_seed(seed)
    frac = torch.rand(len(boxes), k, 2, generator=g)
    xy = boxes[:, None, :2] + frac * (boxes[:, None, 2:] - boxes[:, None, :2])
    visibility = torch.full((len(boxes), k, 1), 2.0)
    return torch.cat([xy, visibility], dim=2)


def random_boxes(n, seed, min_size, max_size):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 200
    wh = min_size + torch.rand(n, 2, generator=g) * (max_size - min_size)
    return torch.cat([xy, xy + wh], dim=1)


# ---------------------------------------------------------------- Keypoints container


def test_container_basics():
    tensor = torch.rand(4, 17, 3)
    kpts = Keypoints(tensor)
    assert len(kpts) == 4 and kpts.device == torch.device("cpu")
    assert Keypoints(tensor.numpy()).tensor.dtype == torch.float32
    assert Keypoints([[[1, 2, 2]]]).tensor.shape == (1, 1, 3)
    assert kpts[1].tensor.shape == (1, 17, 3) and torch.equal(kpts[1].tensor[0], tensor[1])
    assert torch.equal(kpts[-1].tensor[0], tensor[-1])
    assert torch.equal(kpts[1:3].tensor, tensor[1:3])
    assert torch.equal(kpts[torch.tensor([True, False, False, True])].tensor, tensor[[0, 3]])
    # like Detectron2, keypoints stay float32: to() only moves them
    assert kpts.to("cpu").tensor.dtype == torch.float32
    assert repr(kpts) == "Keypoints(num_instances=4)"
    with pytest.raises(ValueError, match=r"\(N, K, 3\).*\(4, 17\)"):
        Keypoints(torch.zeros(4, 17))
    with pytest.raises(ValueError, match=r"\(N, K, 3\)"):
        Keypoints(torch.zeros(4, 17, 2))


def test_cat():
    a, b = Keypoints(torch.rand(2, 21, 3)), Keypoints(torch.rand(4, 21, 3))
    joined = Keypoints.cat([a, b])
    assert torch.equal(joined.tensor, torch.cat([a.tensor, b.tensor]))
    with pytest.raises(ValueError, match="non-empty"):
        Keypoints.cat([])
    with pytest.raises(TypeError, match="element 1 is a Tensor"):
        Keypoints.cat([a, b.tensor])


# ---------------------------------------------------------------- to_heatmap


def test_to_heatmap_hand_worked():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0], [2.0, 4.0, 6.0, 8.0]])
    keypoints = Keypoints(
        torch.tensor(
            [
                # box 0, S = 5: cells are 2 px wide and 4 px tall
                [[3.0, 7.0, 2.0],  # cell (1, 1) -> 6
                 [10.0, 20.0, 2.0],  # on the far corner: last cell (4, 4) -> 24
                 [-1.0, 5.0, 2.0],  # left of the box: not valid
                 [3.0, 7.0, 0.0]],  # not labeled: not valid
                # box 1: cells 0.8 px square
                [[4.0, 6.0, 1.0],  # (2.5, 2.5) -> cell (2, 2) -> 12
                 [2.0, 4.0, 1.0],  # top-left corner -> 0, valid
                 [6.0, 5.0, 2.0],  # right edge -> x cell 4, y cell 1 -> 9
                 [5.0, 8.1, 2.0]]  # just below the box: not valid
            ]
        )
    )
    heatmaps, valid = keypoints.to_heatmap(boxes, 5)
    assert heatmaps.dtype == torch.long and valid.dtype == torch.long
    assert heatmaps.tolist() == [[6, 24, 0, 0], [12, 0, 9, 0]]
    assert valid.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0]]


def test_to_heatmap_vs_loop():
    boxes = random_boxes(6, 0, 5.0, 80.0)
    g = torch.Generator().manual_seed(1)
    # keypoints spread over an area larger than the boxes, with random visibility
    centers = (boxes[:, None, :2] + boxes[:, None, 2:]) / 2
    xy = centers + (torch.rand(6, 9, 2, generator=g) - 0.5) * 120
    visibility = torch.randint(0, 3, (6, 9, 1), generator=g).float()
    keypoints = torch.cat([xy, visibility], dim=2)
    size = 56
    heatmaps, valid = Keypoints(keypoints).to_heatmap(boxes, size)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        for j, (x, y, v) in enumerate(keypoints[i].tolist()):
            cx = size - 1 if x == x1 else math.floor((x - x0) * size / (x1 - x0))
            cy = size - 1 if y == y1 else math.floor((y - y0) * size / (y1 - y0))
            ok = 0 <= cx < size and 0 <= cy < size and v > 0
            assert valid[i, j].item() == int(ok)
            assert heatmaps[i, j].item() == (cy * size + cx if ok else 0)


def test_to_heatmap_empty_and_bad():
    heatmaps, valid = Keypoints(torch.zeros(0, 17, 3)).to_heatmap(torch.zeros(0, 4), 56)
    assert heatmaps.numel() == 0 and valid.numel() == 0 and heatmaps.dtype == torch.long
    with pytest.raises(ValueError, match=r"shape \(2, 4\)"):
        Keypoints(torch.zeros(2, 3, 3)).to_heatmap(torch.zeros(3, 4), 56)


# ---------------------------------------------------------------- heatmaps_to_keypoints


def test_heatmaps_to_keypoints_hand_worked():
    # Maps already at the box's (ceil'd) size are resized by the identity, so the result
    # can be worked out by hand.
    maps = torch.zeros(2, 1, 3, 4)
    maps[0, 0, 1, 2] = 3.0
    maps[1, 0, 2, 1] = 5.0
    rois = torch.tensor([[0.0, 0.0, 4.0, 3.0], [10.0, 20.0, 13.5, 22.2]])
    out = heatmaps_to_keypoints(maps, rois)
    assert out.shape == (2, 1, 4)
    # ROI 0: cell (x=2, y=1) -> center (2.5, 1.5); box exactly 4 x 3 px
    expected_0 = [2.5, 1.5, 3.0, 1.0 / (11 * math.exp(-3.0) + 1.0)]
    # ROI 1: 3.5 x 2.2 px box, ceil'd to 4 x 3; cell (1, 2) -> (1.5 * 3.5/4, 2.5 * 2.2/3)
    expected_1 = [10 + 1.5 * 3.5 / 4, 20 + 2.5 * 2.2 / 3, 5.0, 1.0 / (11 * math.exp(-5.0) + 1.0)]
    torch.testing.assert_close(out[:, 0], torch.tensor([expected_0, expected_1]))


def reference_heatmaps_to_keypoints(maps, rois):
    """Slow per-ROI, per-keypoint version of the same maths."""
    out = torch.zeros(len(rois), maps.shape[1], 4)
    for i, (x0, y0, x1, y1) in enumerate(rois.tolist()):
        width, height = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
        out_w, out_h = math.ceil(width), math.ceil(height)
        resized = F.interpolate(maps[i : i + 1], size=(out_h, out_w), mode="bicubic",
                                align_corners=False)[0]
        for k in range(maps.shape[1]):
            flat = resized[k].flatten()
            pos = int(flat.argmax())
            peak = flat[pos].item()
            y_int, x_int = divmod(pos, out_w)
            score = 1.0 / torch.exp(maps[i, k].double() - peak).sum().item()
            out[i, k] = torch.tensor([
                (x_int + 0.5) * width / out_w + x0,
                (y_int + 0.5) * height / out_h + y0,
                peak,
                score,
            ])
    return out


def test_heatmaps_to_keypoints_vs_loop():
    g = torch.Generator().manual_seed(3)
    rois = random_boxes(7, 4, 0.3, 90.0)
    rois[1] = rois[0]  # two ROIs sharing a size
    rois[2, 2:] = rois[2, :2] + 0.5  # smaller than a pixel: clamped to 1
    maps = torch.randn(7, 5, 14, 14, generator=g)
    out = heatmaps_to_keypoints(maps, rois)
    torch.testing.assert_close(out, reference_heatmaps_to_keypoints(maps, rois), atol=1e-4,
                               rtol=1e-4)


def test_heatmaps_to_keypoints_no_grad_and_empty():
    maps = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = heatmaps_to_keypoints(maps, torch.tensor([[0.0, 0, 10, 10], [5, 5, 30, 20]]))
    assert not out.requires_grad
    empty = heatmaps_to_keypoints(torch.zeros(0, 17, 56, 56), torch.zeros(0, 4))
    assert empty.shape == (0, 17, 4)
    with pytest.raises(ValueError, match=r"rois must have shape \(2, 4\)"):
        heatmaps_to_keypoints(maps, torch.zeros(3, 4))


@pytest.mark.parametrize("min_size,max_size", [(10.0, 56.0), (56.0, 200.0)])
def test_round_trip(min_size, max_size):
    size = 56
    boxes = random_boxes(8, 5, min_size, max_size)
    keypoints = random_keypoints_in_boxes(boxes, 17, 6)
    labels, valid = Keypoints(keypoints).to_heatmap(boxes, size)
    assert bool(valid.all())
    # smooth peaks (as a trained head predicts): a one-pixel spike can fall between the
    # samples when a small box makes the resize shrink the map
    cells_y, cells_x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    label_y, label_x = (labels // size)[..., None, None], (labels % size)[..., None, None]
    maps = -((cells_x - label_x) ** 2 + (cells_y - label_y) ** 2).float() / (2 * 2.0**2)
    decoded = heatmaps_to_keypoints(maps, boxes)
    # a heatmap cell spans box_size / 56 pixels; decoding returns a position inside the cell
    cell = ((boxes[:, 2:] - boxes[:, :2]) / size)[:, None, :]
    error = (decoded[..., :2] - keypoints[..., :2]).abs()
    assert bool((error <= torch.clamp(cell, min=1.0)).all()), error.max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(8)
    rois = random_boxes(6, 9, 2.0, 80.0)
    maps = torch.randn(6, 4, 14, 14, generator=g)
    out = heatmaps_to_keypoints(maps.cuda(), rois.cuda())
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), heatmaps_to_keypoints(maps, rois), atol=1e-3, rtol=1e-3)
    keypoints = Keypoints(random_keypoints_in_boxes(rois, 4, 10))
    labels, valid = keypoints.to("cuda").to_heatmap(rois.cuda(), 56)
    expected = keypoints.to_heatmap(rois, 56)
    assert torch.equal(labels.cpu(), expected[0]) and torch.equal(valid.cpu(), expected[1])
