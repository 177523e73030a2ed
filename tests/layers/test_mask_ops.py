import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from detzoo.layers import paste_masks_in_image
from detzoo.layers import mask_ops
from detzoo.layers.mask_ops import (
    _do_paste_mask,
    _paste_masks_tensor_shape,
    pad_masks,
    paste_mask_in_image_old,
    scale_boxes,
)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.(script|trace)` is deprecated:FutureWarning")


def _bilinear_zero_padded(mask, v, u):
    """Value of `mask` at continuous cell coordinates (v, u), cell centers at integers,
    bilinear between centers and towards 0 outside."""
    height, width = mask.shape
    v0, u0 = math.floor(v), math.floor(u)
    total = 0.0
    for row, weight_row in ((v0, 1 - (v - v0)), (v0 + 1, v - v0)):
        for col, weight_col in ((u0, 1 - (u - u0)), (u0 + 1, u - u0)):
            if 0 <= row < height and 0 <= col < width:
                total += weight_row * weight_col * mask[row, col]
    return total


def _reference_paste(mask, box, img_h, img_w):
    """Slow, obviously correct paste: every image pixel center mapped into the box's mask."""
    mask = np.asarray(mask, dtype=np.float64)
    x0, y0, x1, y1 = (float(v) for v in box)
    mask_h, mask_w = mask.shape
    out = np.zeros((img_h, img_w))
    for i in range(img_h):
        v = (i + 0.5 - y0) / (y1 - y0) * mask_h - 0.5
        for j in range(img_w):
            u = (j + 0.5 - x0) / (x1 - x0) * mask_w - 0.5
            out[i, j] = _bilinear_zero_padded(mask, v, u)
    return out


def _inputs(dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 7, 5, generator=generator, dtype=dtype)  # rectangular masks work too
    boxes = torch.tensor(
        [
            [3.2, 4.7, 20.9, 15.1],
            [-6.0, -3.5, 10.0, 12.0],  # partly outside, top-left
            [25.5, 17.25, 45.0, 33.0],  # partly outside, bottom-right
            [10.4, 10.6, 11.3, 11.2],  # smaller than a pixel
            [0.0, 0.0, 40.0, 30.0],  # the whole image
            [50.0, 40.0, 60.0, 45.0],  # entirely outside
        ]
    )
    return masks, boxes, (30, 40)


class TestAgainstBruteForce:
    def test_soft_values(self):
        masks, boxes, (img_h, img_w) = _inputs()
        pasted, region = _do_paste_mask(masks[:, None], boxes, img_h, img_w, skip_empty=False)
        assert region == (0, img_h, 0, img_w)
        for mask, box, ours in zip(masks, boxes, pasted):
            np.testing.assert_allclose(ours.numpy(), _reference_paste(mask, box, img_h, img_w), atol=1e-5)

    @pytest.mark.parametrize("threshold", [0.5, 0.2])
    def test_binary(self, threshold):
        masks, boxes, (img_h, img_w) = _inputs()
        ours = paste_masks_in_image(masks, boxes, (img_h, img_w), threshold=threshold)
        assert ours.dtype == torch.bool and ours.shape == (6, img_h, img_w)
        for mask, box, pasted in zip(masks, boxes, ours):
            reference = _reference_paste(mask, box, img_h, img_w)
            decisive = np.abs(reference - threshold) > 1e-5
            np.testing.assert_array_equal(pasted.numpy()[decisive], (reference >= threshold)[decisive])

    def test_negative_threshold_gives_uint8_values(self):
        masks, boxes, (img_h, img_w) = _inputs()
        ours = paste_masks_in_image(masks, boxes, (img_h, img_w), threshold=-1)
        assert ours.dtype == torch.uint8
        for mask, box, pasted in zip(masks, boxes, ours):
            reference = np.floor(_reference_paste(mask, box, img_h, img_w) * 255)
            assert np.abs(pasted.numpy().astype(np.int64) - reference).max() <= 1


@pytest.mark.parametrize("threshold", [0.5, 0.05, -1.0])
def test_cpu_windows_equal_whole_image(threshold):
    """On CPU each box is pasted into its own window only; nothing may be lost outside it."""
    generator = torch.Generator().manual_seed(1)
    masks = torch.rand(8, 4, 4, generator=generator) + 0.5  # coarse cells: long bilinear tails
    xy = torch.rand(8, 2, generator=generator) * 50 - 5
    boxes = torch.cat([xy, xy + torch.rand(8, 2, generator=generator) * 40 + 2], dim=1)
    pasted, _ = _do_paste_mask(masks[:, None], boxes, 50, 60, skip_empty=False)
    expected = pasted >= threshold if threshold >= 0 else (pasted * 255).to(torch.uint8)
    torch.testing.assert_close(paste_masks_in_image(masks, boxes, (50, 60), threshold), expected)


def _deterministic_blobs(count, size=28):
    """Soft elliptic blobs (sharp sigmoid edges, like trained mask predictions), no RNG."""
    grid = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    ys, xs = grid[:, None], grid[None, :]
    blobs = []
    for i in range(count):
        cx, cy = 0.5 + 0.2 * math.sin(i), 0.5 + 0.2 * math.cos(1.7 * i)
        rx, ry = 0.25 + 0.15 * abs(math.sin(2.3 * i)), 0.25 + 0.15 * abs(math.cos(0.7 * i))
        inside = 1 - ((xs - cx) / rx) ** 2 - ((ys - cy) / ry) ** 2
        blobs.append(torch.sigmoid(12 * inside))
    return torch.stack(blobs)


def _deterministic_boxes(count, img_h, img_w):
    rows = []
    for i in range(count):
        x0 = (img_w - 20) * (0.5 + 0.5 * math.sin(3.1 * i)) - 10
        y0 = (img_h - 20) * (0.5 + 0.5 * math.cos(2.2 * i))
        w, h = 20 + 70 * abs(math.sin(1.3 * i + 0.4)), 20 + 60 * abs(math.cos(0.9 * i + 0.2))
        rows.append([x0, y0, x0 + w, y0 + h])
    return torch.tensor(rows)


def test_agrees_with_old_algorithm_on_most_pixels():
    """Detectron1's paste (truncated box, PIL resize of the zero-padded mask) differs only in a
    band of boundary pixels; Detectron2 documents the difference."""
    count, img_h, img_w = 30, 90, 120
    masks, boxes = _deterministic_blobs(count), _deterministic_boxes(count, img_h, img_w)
    new = paste_masks_in_image(masks, boxes, (img_h, img_w))
    padded, scale = pad_masks(masks, 1)
    scaled = scale_boxes(boxes, scale)
    old = torch.stack(
        [paste_mask_in_image_old(padded[i], scaled[i], img_h, img_w, 0.5) for i in range(count)]
    ).bool()

    disagree = new ^ old
    assert disagree.sum() < 0.1 * (new | old).sum()
    # Nearly every disagreement lies within two pixels of the new mask's boundary.
    dilated = F.max_pool2d(new[:, None].float(), 5, 1, 2)[:, 0].bool()
    eroded = ~F.max_pool2d((~new)[:, None].float(), 5, 1, 2)[:, 0].bool()
    assert (disagree & ~(dilated & ~eroded)).sum() <= 0.01 * disagree.sum()


class TestOldAlgorithm:
    def test_covers_truncated_box_inclusive(self):
        mask = torch.ones(4, 4)
        pasted = paste_mask_in_image_old(mask, torch.tensor([2.7, 1.2, 6.9, 3.99]), 10, 10, 0.5)
        assert pasted.dtype == torch.uint8
        expected = torch.zeros(10, 10, dtype=torch.uint8)
        expected[1:4, 2:7] = 1  # int() truncation: x 2..6, y 1..3
        assert torch.equal(pasted, expected)

    def test_clipped_at_image_border(self):
        pasted = paste_mask_in_image_old(torch.ones(4, 4), torch.tensor([-3.0, 5.0, 4.0, 14.0]), 10, 8, 0.5)
        expected = torch.zeros(10, 8, dtype=torch.uint8)
        expected[5:10, 0:5] = 1
        assert torch.equal(pasted, expected)

    def test_pad_and_scale(self):
        masks = torch.ones(2, 4, 4)
        padded, scale = pad_masks(masks, 1)
        assert padded.shape == (2, 6, 6) and scale == 1.5
        assert padded[:, 1:5, 1:5].eq(1).all() and padded.sum() == 32
        scaled = scale_boxes(torch.tensor([[0.0, 0.0, 4.0, 2.0]]), 1.5)
        torch.testing.assert_close(scaled, torch.tensor([[-1.0, -0.5, 5.0, 2.5]]))


class TestInterface:
    def test_empty(self):
        out = paste_masks_in_image(torch.zeros(0, 28, 28), torch.zeros(0, 4), (20, 30))
        assert out.shape == (0, 20, 30) and out.dtype == torch.bool
        out = paste_masks_in_image(torch.zeros(0, 28, 28), torch.zeros(0, 4), (20, 30), threshold=-1)
        assert out.dtype == torch.uint8

    def test_boxes_object_with_tensor_attribute(self):
        class BoxesLike:
            def __init__(self, tensor):
                self.tensor = tensor

        masks, boxes, shape = _inputs(torch.float32)
        expected = paste_masks_in_image(masks, boxes, shape)
        assert torch.equal(paste_masks_in_image(masks, BoxesLike(boxes), shape), expected)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.uint8, torch.bool])
    def test_mask_dtypes(self, dtype):
        masks, boxes, shape = _inputs(torch.float32)
        if not dtype.is_floating_point:
            masks = masks > 0.5
        masks = masks.to(dtype)
        # Sampled in float32 whatever the input dtype.
        expected = paste_masks_in_image(masks.float(), boxes, shape)
        assert torch.equal(paste_masks_in_image(masks, boxes, shape), expected)

    def test_non_contiguous(self):
        masks, boxes, shape = _inputs(torch.float32)
        transposed_masks = masks.transpose(1, 2).contiguous().transpose(1, 2)
        transposed_boxes = boxes.t().contiguous().t()
        assert not transposed_masks.is_contiguous() and not transposed_boxes.is_contiguous()
        expected = paste_masks_in_image(masks, boxes, shape)
        assert torch.equal(paste_masks_in_image(transposed_masks, transposed_boxes, shape), expected)

    def test_bad_inputs(self):
        with pytest.raises(ValueError, match=r"masks must be \(N, Hm, Wm\)"):
            paste_masks_in_image(torch.zeros(2, 1, 28, 28), torch.zeros(2, 4), (10, 10))
        with pytest.raises(ValueError, match=r"boxes must be \(N, 4\) with N = 2"):
            paste_masks_in_image(torch.zeros(2, 28, 28), torch.zeros(3, 4), (10, 10))
        with pytest.raises(ValueError, match="image_shape"):
            paste_masks_in_image(torch.zeros(2, 28, 28), torch.zeros(2, 4), (10, 10, 3))

    def test_gpu_chunks_bounded_by_memory_limit(self, monkeypatch):
        assert mask_ops._num_chunks(7, 800, 1000, on_cpu=True) == 7
        assert mask_ops._num_chunks(7, 800, 1000, on_cpu=False) == 1
        monkeypatch.setattr(mask_ops, "GPU_MEM_LIMIT", 800 * 1000 * 4 * 2)  # two masks per chunk
        assert mask_ops._num_chunks(7, 800, 1000, on_cpu=False) == 4
        monkeypatch.setattr(mask_ops, "GPU_MEM_LIMIT", 1000)  # smaller than one mask
        assert mask_ops._num_chunks(7, 800, 1000, on_cpu=False) == 7


class TestTracingAndScripting:
    def test_traced_image_size_stays_an_input(self):
        masks, boxes, _ = _inputs(torch.float32)

        def paste(masks, boxes, image):
            return _paste_masks_tensor_shape(masks, boxes, (image.shape[-2], image.shape[-1]))

        traced = torch.jit.trace(paste, (masks, boxes, torch.zeros(30, 40)))
        for shape in [(30, 40), (17, 55)]:
            assert torch.equal(traced(masks, boxes, torch.zeros(shape)), paste_masks_in_image(masks, boxes, shape))

    def test_scripted_equals_eager(self):
        masks, boxes, shape = _inputs(torch.float32)
        scripted = torch.jit.script(paste_masks_in_image)
        assert torch.equal(scripted(masks, boxes, shape), paste_masks_in_image(masks, boxes, shape))
