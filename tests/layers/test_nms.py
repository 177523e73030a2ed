"""nms and batched_nms against torchvision and a brute-force greedy loop.

The kernel takes a different route below and above 512 boxes (score order vs. x1 sweep), and
another for a negative threshold or non-finite coordinates, so cases cover each.
"""
import pytest
import torch
import torchvision

from detzoo.layers import batched_nms, nms


def clustered_boxes(n, seed, n_clusters=None, dtype=torch.float32):
    """XYXY boxes jittered around a few objects, as a detector outputs them, with random scores."""
    g = torch.Generator().manual_seed(seed)
    n_clusters = n_clusters or max(1, n // 20)
    centres = torch.rand(n_clusters, 2, generator=g) * torch.tensor([600.0, 400.0])
    sizes = 10 + torch.rand(n_clusters, 2, generator=g) * 150
    which = torch.randint(0, n_clusters, (n,), generator=g)
    jitter = torch.randn(n, 4, generator=g) * 0.1
    centre = centres[which] + jitter[:, :2] * sizes[which]
    size = sizes[which] * (1 + jitter[:, 2:]).clamp(min=0.2)
    boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
    return boxes.to(dtype), torch.rand(n, generator=g).to(dtype)


def integer_boxes(n, seed, extent=40, score_levels=5):
    """Small integer boxes on a small grid: many IoUs are exact fractions such as 1/2 or 1/3.
    Scores take `score_levels` values, so ties abound, or are all distinct if it is None."""
    g = torch.Generator().manual_seed(seed)
    corner = torch.randint(0, extent, (n, 2), generator=g)
    size = torch.randint(1, 12, (n, 2), generator=g)
    boxes = torch.cat([corner, corner + size], 1).float()
    if score_levels is None:
        scores = torch.randperm(n, generator=g).float()
    else:
        scores = torch.randint(0, score_levels, (n,), generator=g).float()
    return boxes, scores


def greedy_reference(boxes, scores, iou_threshold):
    """The textbook loop: visit boxes by decreasing score, ties in input order (NaN first, as
    torch.sort orders them)."""
    order = scores.sort(descending=True, stable=True)[1].tolist()
    # torchvision's box_iou forms inter / (area1 + area2 - inter) in float32 like the kernels;
    # the comparison is made in float64, with the threshold as given.
    above = (torchvision.ops.box_iou(boxes, boxes).double() > iou_threshold).numpy()
    suppressed = [False] * len(order)
    keep = []
    for i in order:
        if not suppressed[i]:
            keep.append(i)
            suppressed = [s or bool(a) for s, a in zip(suppressed, above[i])]
    return torch.tensor(keep, dtype=torch.int64)


THRESHOLDS = [0.3, 1 / 3, 0.5, 0.7, 0.95]


class TestNms:
    @pytest.mark.parametrize("n", [60, 3000])
    @pytest.mark.parametrize("iou_threshold", THRESHOLDS)
    def test_matches_torchvision(self, n, iou_threshold):
        boxes, scores = clustered_boxes(n, seed=n)
        keep = nms(boxes, scores, iou_threshold)
        assert keep.dtype == torch.int64
        torch.testing.assert_close(keep, torchvision.ops.nms(boxes, scores, iou_threshold), rtol=0, atol=0)

    @pytest.mark.parametrize("n", [150, 700])
    @pytest.mark.parametrize("iou_threshold", [0.25, 1 / 3, 0.5])
    def test_ties_in_iou_and_score(self, n, iou_threshold):
        boxes, scores = integer_boxes(n, seed=n)
        expected = greedy_reference(boxes, scores, iou_threshold)
        torch.testing.assert_close(nms(boxes, scores, iou_threshold), expected, rtol=0, atol=0)

    def test_iou_exactly_at_threshold_is_kept(self):
        half = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]])  # IoU 1/2
        third = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]])  # IoU 1/3
        scores = torch.tensor([0.9, 0.8])
        cases = [(half, 0.5, [0, 1]), (half, 0.4999, [0]),
                 # float32(1/3) lies above 1/3: the IoU is above the threshold given as a double
                 (third, 1 / 3, [0]), (third, 0.33334, [0, 1])]
        for boxes, iou_threshold, expected in cases:
            assert nms(boxes, scores, iou_threshold).tolist() == expected
            assert torchvision.ops.nms(boxes, scores, iou_threshold).tolist() == expected

    @pytest.mark.parametrize("n", [100, 1000])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
    def test_nan_and_signed_zero_scores(self, n, dtype):
        boxes, scores = integer_boxes(n, seed=14)
        scores = (scores - 2).to(dtype)  # levels -2 .. 2
        scores[::9] = float("nan")
        scores[scores == 0] *= torch.where(torch.arange(int((scores == 0).sum())) % 2 == 0, 1.0, -1.0).to(dtype)
        expected = greedy_reference(boxes, scores, 0.4)
        torch.testing.assert_close(nms(boxes, scores, 0.4), expected, rtol=0, atol=0)

    def test_duplicates_keep_the_first(self):
        boxes = torch.tensor([[1.0, 1.0, 5.0, 5.0]] * 4 + [[20.0, 20.0, 30.0, 30.0]] * 3)
        scores = torch.tensor([0.5, 0.5, 0.9, 0.5, 0.2, 0.2, 0.2])
        assert nms(boxes, scores, 0.5).tolist() == [2, 4]
        assert nms(boxes, scores, 1.0).tolist() == [2, 0, 1, 3, 4, 5, 6]  # IoU 1 is not above 1

    @pytest.mark.parametrize("n", [40, 1000])
    def test_negative_threshold_suppresses_everything(self, n):
        boxes, scores = clustered_boxes(n, seed=5)
        torch.testing.assert_close(nms(boxes, scores, -0.1), torchvision.ops.nms(boxes, scores, -0.1))
        assert nms(boxes, scores, -0.1).tolist() == [int(scores.argmax())]

    def test_non_finite_coordinates(self):
        boxes, scores = clustered_boxes(1000, seed=6)
        boxes[::7, 0] = float("nan")
        boxes[3::11, 2] = float("inf")
        torch.testing.assert_close(nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))

    def test_empty(self):
        keep = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
        assert keep.shape == (0,) and keep.dtype == torch.int64

    def test_non_contiguous(self):
        boxes, scores = clustered_boxes(800, seed=7)
        strided_boxes = boxes.t().contiguous().t()
        strided_scores = scores.repeat_interleave(2)[::2]
        assert not strided_boxes.is_contiguous() and not strided_scores.is_contiguous()
        torch.testing.assert_close(nms(strided_boxes, strided_scores, 0.6), torchvision.ops.nms(boxes, scores, 0.6))

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_reduced_precision_is_compared_in_float(self, dtype):
        boxes, scores = clustered_boxes(1500, seed=8)
        boxes, scores = boxes.to(dtype), scores.to(dtype)
        expected = torchvision.ops.nms(boxes.float(), scores.float(), 0.5)
        torch.testing.assert_close(nms(boxes, scores, 0.5), expected)

    def test_float64(self):
        boxes, scores = clustered_boxes(1500, seed=9, dtype=torch.float64)
        torch.testing.assert_close(nms(boxes, scores, 0.6), torchvision.ops.nms(boxes, scores, 0.6))

    def test_scores_may_have_another_dtype(self):
        boxes, scores = clustered_boxes(300, seed=10)
        scores = scores.half()
        torch.testing.assert_close(nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores.float(), 0.5))

    def test_bad_inputs(self):
        boxes, scores = torch.zeros(3, 4), torch.zeros(3)
        with pytest.raises(ValueError, match=r"nms: boxes must have shape \(N, 4\), got \(3, 5\)"):
            nms(torch.zeros(3, 5), scores, 0.5)
        with pytest.raises(ValueError, match=r"nms: scores must have shape \(3,\)"):
            nms(boxes, torch.zeros(4), 0.5)
        with pytest.raises(ValueError, match=r"nms: scores must have shape"):
            nms(boxes, torch.zeros(3, 1), 0.5)
        with pytest.raises(TypeError, match="nms: boxes must have a floating dtype"):
            nms(boxes.long(), scores, 0.5)
        with pytest.raises(TypeError, match="nms: scores must be a torch.Tensor"):
            nms(boxes, [0.0, 0.0, 0.0], 0.5)
        with pytest.raises(ValueError, match="nms: scores is on meta"):
            nms(boxes, scores.to("meta"), 0.5)
        with pytest.raises(TypeError, match="nms: iou_threshold must be a real number"):
            nms(boxes, scores, "0.5")

    def test_opcheck(self):
        boxes, scores = clustered_boxes(40, seed=11)
        torch.library.opcheck(torch.ops.detzoo.nms.default, (boxes, scores, 0.5))


class TestBatchedNms:
    @pytest.mark.parametrize("n", [300, 5000])  # torchvision shifts boxes below 4000, loops above
    @pytest.mark.parametrize("iou_threshold", [1 / 3, 0.5, 0.7])
    def test_matches_torchvision(self, n, iou_threshold):
        # distinct scores: torchvision's per-class path orders equal scores arbitrarily
        boxes, scores = integer_boxes(n, seed=n, extent=200, score_levels=None)
        idxs = torch.randint(0, 30, (n,), generator=torch.Generator().manual_seed(n))
        expected = torchvision.ops.batched_nms(boxes, scores, idxs, iou_threshold)
        torch.testing.assert_close(batched_nms(boxes, scores, idxs, iou_threshold), expected, rtol=0, atol=0)

    def test_negative_coordinates_keep_classes_apart(self):
        boxes, scores = integer_boxes(400, seed=12, extent=60)
        boxes -= 100
        idxs = torch.randint(0, 4, (400,), generator=torch.Generator().manual_seed(12))
        expected = torch.cat([torch.nonzero(idxs == c)[:, 0][torchvision.ops.nms(boxes[idxs == c], scores[idxs == c], 0.5)]
                              for c in range(4)])
        expected = expected[scores[expected].sort(descending=True, stable=True)[1]]
        keep = batched_nms(boxes, scores, idxs, 0.5)
        assert sorted(keep.tolist()) == sorted(expected.tolist())
        assert (scores[keep].diff() <= 0).all()

    def test_half_boxes(self):
        boxes, scores = integer_boxes(500, seed=13)
        idxs = torch.randint(0, 80, (500,), generator=torch.Generator().manual_seed(13))
        expected = torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
        torch.testing.assert_close(batched_nms(boxes.half(), scores, idxs, 0.5), expected, rtol=0, atol=0)

    def test_empty(self):
        keep = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
        assert keep.shape == (0,) and keep.dtype == torch.int64

    def test_bad_idxs(self):
        boxes, scores = torch.zeros(3, 4), torch.zeros(3)
        with pytest.raises(ValueError, match=r"batched_nms: idxs must have shape \(3,\)"):
            batched_nms(boxes, scores, torch.zeros(2, dtype=torch.int64), 0.5)
        with pytest.raises(TypeError, match="batched_nms: idxs must hold category indices"):
            batched_nms(boxes, scores, torch.zeros(3, dtype=torch.bool), 0.5)
        with pytest.raises(ValueError, match="batched_nms: boxes must have shape"):
            batched_nms(torch.zeros(3, 5), scores, torch.zeros(3, dtype=torch.int64), 0.5)
