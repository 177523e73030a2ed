"""nms_rotated and batched_nms_rotated against a brute-force greedy loop over the float64
polygon-clipping IoU of test_rotated_boxes, and against torchvision for axis-aligned boxes."""
import functools

import pytest
import torch
import torchvision

from detzoo.layers import batched_nms_rotated, nms_rotated, pairwise_iou_rotated
from tests.layers.test_rotated_boxes import pairwise_reference, random_rotated_boxes, xywha_to_xyxy


def greedy_reference(ious, scores, iou_threshold):
    """Visit boxes by decreasing score (ties in input order); keep each one not suppressed."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in order:
        if not suppressed[i]:
            keep.append(i)
            suppressed |= ious[i] > iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


@functools.lru_cache(maxsize=None)
def crowded_case(n=90, seed=0):
    """float64 rotated boxes that mostly overlap, their scores and reference IoU matrix."""
    boxes = random_rotated_boxes(n, seed, extent=80, dtype=torch.float64)
    scores = torch.rand(n, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return boxes, scores, pairwise_reference(boxes, boxes)


class TestNmsRotated:
    @pytest.mark.parametrize("iou_threshold", [0.15, 0.2, 0.4, 0.6, 0.8])
    def test_matches_greedy_reference(self, iou_threshold):
        boxes, scores, ious = crowded_case()
        keep = nms_rotated(boxes, scores, iou_threshold)
        assert keep.dtype == torch.int64
        torch.testing.assert_close(keep, greedy_reference(ious, scores, iou_threshold), rtol=0, atol=0)
        # float32 decides the same here (no reference IoU is within 1e-4 of these thresholds)
        assert ((ious - iou_threshold).abs() > 1e-4).all()
        torch.testing.assert_close(nms_rotated(boxes.float(), scores.float(), iou_threshold), keep, rtol=0, atol=0)

    @pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7])
    def test_many_boxes_match_greedy_over_pairwise_iou(self, iou_threshold):
        # Above 512 boxes the kernel sorts them by their left bound and screens a range of
        # them; the greedy loop over the full IoU matrix (checked in test_rotated_boxes) sees all.
        boxes = random_rotated_boxes(1500, seed=8, extent=250)
        scores = torch.rand(1500, generator=torch.Generator().manual_seed(9))
        expected = greedy_reference(pairwise_iou_rotated(boxes, boxes), scores, iou_threshold)
        torch.testing.assert_close(nms_rotated(boxes, scores, iou_threshold), expected, rtol=0, atol=0)

    @pytest.mark.parametrize("angle", [0.0, 180.0, -360.0])
    def test_axis_aligned_matches_torchvision(self, angle):
        boxes = random_rotated_boxes(2000, seed=3, extent=400, dtype=torch.float64)
        boxes[:, 4] = angle
        scores = torch.rand(2000, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        expected = torchvision.ops.nms(xywha_to_xyxy(boxes), scores, 0.5)
        torch.testing.assert_close(nms_rotated(boxes, scores, 0.5), expected, rtol=0, atol=0)

    def test_quarter_turn_with_swapped_sides_is_a_duplicate(self):
        boxes = torch.tensor([[10.0, 10.0, 8.0, 4.0, 30.0], [10.0, 10.0, 4.0, 8.0, 120.0], [40.0, 10.0, 8.0, 4.0, 0.0]])
        scores = torch.tensor([0.5, 0.9, 0.5])
        assert nms_rotated(boxes, scores, 0.99).tolist() == [1, 2]

    def test_equal_scores_keep_input_order(self):
        boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0, 10.0]] * 3 + [[50.0, 0.0, 4.0, 4.0, 10.0]] * 2)
        scores = torch.tensor([0.3, 0.3, 0.3, 0.3, 0.7])
        assert nms_rotated(boxes, scores, 0.5).tolist() == [4, 0]

    def test_negative_threshold_suppresses_everything(self):
        boxes, scores, _ = crowded_case()
        boxes = boxes.clone()
        boxes[:, 0] += torch.arange(len(boxes), dtype=boxes.dtype) * 1000  # all disjoint
        assert nms_rotated(boxes, scores, -0.1).tolist() == [int(scores.argmax())]
        assert len(nms_rotated(boxes, scores, 0.0)) == len(boxes)

    def test_empty(self):
        keep = nms_rotated(torch.zeros(0, 5), torch.zeros(0), 0.5)
        assert keep.shape == (0,) and keep.dtype == torch.int64

    def test_non_contiguous(self):
        boxes, scores, _ = crowded_case()
        strided = boxes.t().contiguous().t()
        assert not strided.is_contiguous()
        torch.testing.assert_close(nms_rotated(strided, scores[::1], 0.4), nms_rotated(boxes, scores, 0.4))

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_reduced_precision_is_computed_in_float(self, dtype):
        boxes, scores, _ = crowded_case()
        boxes, scores = boxes.to(dtype), scores.to(dtype)
        expected = nms_rotated(boxes.float(), scores.float(), 0.4)
        torch.testing.assert_close(nms_rotated(boxes, scores, 0.4), expected)

    def test_bad_inputs(self):
        boxes, scores = torch.zeros(3, 5), torch.zeros(3)
        with pytest.raises(ValueError, match=r"nms_rotated: boxes must have shape \(N, 5\), got \(3, 4\)"):
            nms_rotated(torch.zeros(3, 4), scores, 0.5)
        with pytest.raises(ValueError, match=r"nms_rotated: scores must have shape \(3,\)"):
            nms_rotated(boxes, torch.zeros(2), 0.5)
        with pytest.raises(TypeError, match="nms_rotated: scores must have a floating dtype"):
            nms_rotated(boxes, scores.long(), 0.5)
        with pytest.raises(ValueError, match="nms_rotated: scores is on meta"):
            nms_rotated(boxes, scores.to("meta"), 0.5)

    def test_opcheck(self):
        boxes = random_rotated_boxes(30, seed=5)
        torch.library.opcheck(torch.ops.detzoo.nms_rotated.default, (boxes, torch.rand(30), 0.3))


class TestBatchedNmsRotated:
    def per_class_reference(self, ious, scores, idxs, iou_threshold):
        same_class = idxs[:, None] == idxs[None, :]
        return greedy_reference(torch.where(same_class, ious, torch.zeros_like(ious)), scores, iou_threshold)

    @pytest.mark.parametrize("iou_threshold", [0.1, 0.5])
    def test_matches_per_class_reference(self, iou_threshold):
        boxes, scores, ious = crowded_case()
        idxs = torch.randint(0, 5, (len(boxes),), generator=torch.Generator().manual_seed(6))
        expected = self.per_class_reference(ious, scores, idxs, iou_threshold)
        torch.testing.assert_close(batched_nms_rotated(boxes, scores, idxs, iou_threshold), expected, rtol=0, atol=0)

    def test_many_boxes_match_per_class_greedy(self):
        boxes = random_rotated_boxes(1500, seed=10, extent=120)
        scores = torch.rand(1500, generator=torch.Generator().manual_seed(11))
        idxs = torch.randint(0, 12, (1500,), generator=torch.Generator().manual_seed(12))
        expected = self.per_class_reference(pairwise_iou_rotated(boxes, boxes), scores, idxs, 0.5)
        torch.testing.assert_close(batched_nms_rotated(boxes, scores, idxs, 0.5), expected, rtol=0, atol=0)

    @pytest.mark.parametrize("shift", [-500.0, 2e4])
    def test_negative_and_large_coordinates(self, shift):
        boxes, scores, ious = crowded_case()
        boxes = boxes.clone()
        boxes[:, :2] += shift
        idxs = torch.randint(0, 40, (len(boxes),), generator=torch.Generator().manual_seed(7))
        expected = self.per_class_reference(ious, scores, idxs, 0.3)
        torch.testing.assert_close(batched_nms_rotated(boxes, scores, idxs, 0.3), expected, rtol=0, atol=0)

    def test_empty(self):
        keep = batched_nms_rotated(torch.zeros(0, 5), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
        assert keep.shape == (0,) and keep.dtype == torch.int64

    def test_bad_idxs(self):
        with pytest.raises(ValueError, match=r"batched_nms_rotated: idxs must have shape \(3,\)"):
            batched_nms_rotated(torch.zeros(3, 5), torch.zeros(3), torch.zeros(4, dtype=torch.int64), 0.5)
