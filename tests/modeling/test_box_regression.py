"""Box transforms: round trips, torchvision's BoxCoder, per-box loops, clamping, dtypes, and
the dense regression loss against per-image references (torchvision's IoU losses)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

from detzoo.modeling.box_regression import (
    _DEFAULT_SCALE_CLAMP,
    Box2BoxTransform,
    Box2BoxTransformLinear,
    Box2BoxTransformRotated,
    _dense_box_regression_loss,
)
from detzoo.structures import Boxes, RotatedBoxes


def _random_boxes(n, generator, max_coord=100.0, min_size=1.0, dtype=torch.float32):
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * max_coord
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * max_coord / 2 + min_size
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


def _random_rotated(n, generator):
    ctr = torch.rand(n, 2, generator=generator) * 100
    wh = torch.rand(n, 2, generator=generator) * 50 + 1
    angle = torch.rand(n, 1, generator=generator) * 360 - 180
    return torch.cat([ctr, wh, angle], dim=1)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_round_trip(weights):
    g = torch.Generator().manual_seed(0)
    src, target = _random_boxes(200, g), _random_boxes(200, g)
    transform = Box2BoxTransform(weights)
    deltas = transform.get_deltas(src, target)
    torch.testing.assert_close(transform.apply_deltas(deltas, src), target, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_matches_torchvision_box_coder(weights):
    g = torch.Generator().manual_seed(1)
    src, target = _random_boxes(100, g), _random_boxes(100, g)
    ours = Box2BoxTransform(weights)
    theirs = BoxCoder(weights, bbox_xform_clip=_DEFAULT_SCALE_CLAMP)
    torch.testing.assert_close(ours.get_deltas(src, target), theirs.encode_single(target, src), rtol=1e-6, atol=1e-6)
    deltas = torch.randn(100, 4, generator=g) * 2
    torch.testing.assert_close(ours.apply_deltas(deltas, src), theirs.decode_single(deltas, src), rtol=1e-6, atol=1e-4)


def test_apply_deltas_per_box_loop_with_k_sets_and_clamp():
    g = torch.Generator().manual_seed(2)
    boxes = _random_boxes(7, g)
    deltas = torch.randn(7, 3 * 4, generator=g)
    deltas[0, 2] = 50.0  # far beyond the clamp
    weights = (10.0, 10.0, 5.0, 5.0)
    out = Box2BoxTransform(weights).apply_deltas(deltas, boxes)
    assert out.shape == (7, 12)
    for i in range(7):
        x0, y0, x1, y1 = boxes[i].double().tolist()
        w, h = x1 - x0, y1 - y0
        cx, cy = x0 + w / 2, y0 + h / 2
        for k in range(3):
            dx, dy, dw, dh = [d / wt for d, wt in zip(deltas[i, 4 * k : 4 * k + 4].tolist(), weights)]
            dw, dh = min(dw, _DEFAULT_SCALE_CLAMP), min(dh, _DEFAULT_SCALE_CLAMP)
            pcx, pcy, pw, ph = cx + dx * w, cy + dy * h, math.exp(dw) * w, math.exp(dh) * h
            expected = torch.tensor([pcx - pw / 2, pcy - ph / 2, pcx + pw / 2, pcy + ph / 2])
            torch.testing.assert_close(out[i, 4 * k : 4 * k + 4], expected, rtol=1e-5, atol=1e-3)
    assert out[0, 2] - out[0, 0] == pytest.approx(1000.0 / 16 * (boxes[0, 2] - boxes[0, 0]).item(), rel=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_apply_deltas_decodes_in_float32(dtype):
    g = torch.Generator().manual_seed(3)
    boxes = _random_boxes(10, g)
    deltas = torch.randn(10, 4, generator=g).to(dtype)
    out = Box2BoxTransform((1.0, 1.0, 1.0, 1.0)).apply_deltas(deltas, boxes)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, Box2BoxTransform((1.0,) * 4).apply_deltas(deltas.float(), boxes))


def test_empty_and_non_contiguous():
    transform = Box2BoxTransform((1.0, 1.0, 1.0, 1.0))
    assert transform.get_deltas(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)
    assert transform.apply_deltas(torch.zeros(0, 8), torch.zeros(0, 4)).shape == (0, 8)
    g = torch.Generator().manual_seed(4)
    boxes = _random_boxes(6, g)
    wide = torch.randn(6, 8, generator=g)
    strided = wide[:, ::2]
    assert not strided.is_contiguous()
    expected = transform.apply_deltas(strided.contiguous(), boxes)
    torch.testing.assert_close(transform.apply_deltas(strided, boxes), expected)


def test_gradient_flows_to_deltas():
    g = torch.Generator().manual_seed(5)
    boxes = _random_boxes(4, g, dtype=torch.float64)
    deltas = torch.randn(4, 8, generator=g, dtype=torch.float64, requires_grad=True)
    transform = Box2BoxTransform((2.0, 2.0, 1.0, 1.0))
    # apply_deltas decodes in float32, so the gradient is compared with the closed form
    # d(x0)/d(dx) = w / wx rather than by float64 gradcheck.
    out = transform.apply_deltas(deltas, boxes)
    out[:, 0].sum().backward()
    widths = (boxes[:, 2] - boxes[:, 0]).float()
    torch.testing.assert_close(deltas.grad[:, 0].float(), widths / 2.0)
    assert (deltas.grad[:, 1] == 0).all()


def test_bad_inputs():
    transform = Box2BoxTransform((1.0, 1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="positive width"):
        transform.get_deltas(torch.tensor([[0.0, 0.0, 0.0, 1.0]]), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    with pytest.raises(ValueError, match=r"\(N, k \* 4\)"):
        transform.apply_deltas(torch.zeros(3, 6), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="same number"):
        transform.get_deltas(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="4 values"):
        Box2BoxTransform((1.0, 1.0))


def test_rotated_round_trip_and_angle_wrap():
    g = torch.Generator().manual_seed(6)
    src, target = _random_rotated(100, g), _random_rotated(100, g)
    transform = Box2BoxTransformRotated((10.0, 10.0, 5.0, 5.0, 1.0))
    deltas = transform.get_deltas(src, target)
    # The angle delta takes the short way round: |da| <= pi * wa.
    assert (deltas[:, 4].abs() <= math.pi + 1e-6).all()
    out = transform.apply_deltas(deltas, src)
    torch.testing.assert_close(out[:, :4], target[:, :4], rtol=1e-5, atol=1e-3)
    angle_error = (out[:, 4] - target[:, 4] + 180) % 360 - 180
    assert angle_error.abs().max() < 1e-3
    assert ((out[:, 4] >= -180) & (out[:, 4] < 180)).all()


def test_rotated_per_box_loop():
    g = torch.Generator().manual_seed(7)
    boxes = _random_rotated(5, g)
    deltas = torch.randn(5, 10, generator=g)
    weights = (1.0, 2.0, 3.0, 4.0, 0.5)
    out = Box2BoxTransformRotated(weights).apply_deltas(deltas, boxes)
    for i in range(5):
        cx, cy, w, h, a = boxes[i].double().tolist()
        for k in range(2):
            d = [deltas[i, 5 * k + j].item() / weights[j] for j in range(5)]
            dw, dh = min(d[2], _DEFAULT_SCALE_CLAMP), min(d[3], _DEFAULT_SCALE_CLAMP)
            angle = (a + math.degrees(d[4]) + 180) % 360 - 180
            expected = torch.tensor([cx + d[0] * w, cy + d[1] * h, w * math.exp(dw), h * math.exp(dh), angle])
            torch.testing.assert_close(out[i, 5 * k : 5 * k + 5], expected, rtol=1e-5, atol=1e-3)


def test_rotated_hand_computed_delta():
    transform = Box2BoxTransformRotated((1.0, 1.0, 1.0, 1.0, 1.0))
    src = torch.tensor([[10.0, 10.0, 4.0, 2.0, 170.0]])
    target = torch.tensor([[12.0, 9.0, 8.0, 2.0, -170.0]])
    deltas = transform.get_deltas(src, target)
    expected = torch.tensor([[0.5, -0.5, math.log(2.0), 0.0, math.radians(20.0)]])
    torch.testing.assert_close(deltas, expected)


@pytest.mark.parametrize("normalize_by_size", [True, False])
def test_linear_round_trip_and_loop(normalize_by_size):
    g = torch.Generator().manual_seed(8)
    centers = torch.rand(50, 2, generator=g) * 100
    half = torch.rand(50, 1, generator=g) * 8 + 1
    anchors = torch.cat([centers - half, centers + half], dim=1)
    ltrb = torch.rand(50, 4, generator=g) * 30
    target = torch.cat([centers - ltrb[:, :2], centers + ltrb[:, 2:]], dim=1)
    transform = Box2BoxTransformLinear(normalize_by_size=normalize_by_size)
    deltas = transform.get_deltas(anchors, target)
    expected = ltrb / (2 * half) if normalize_by_size else ltrb
    torch.testing.assert_close(deltas, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(transform.apply_deltas(deltas, anchors), target, rtol=1e-5, atol=1e-3)
    # Negative distances are clamped to 0; k = 2 sets per box decode independently.
    two_sets = torch.cat([-deltas, deltas], dim=1)
    out = transform.apply_deltas(two_sets, anchors)
    torch.testing.assert_close(out[:, :4], torch.cat([centers, centers], dim=1))
    torch.testing.assert_close(out[:, 4:], target, rtol=1e-5, atol=1e-3)


def _dense_case(seed, num_images=2, level_sizes=(12, 5)):
    g = torch.Generator().manual_seed(seed)
    anchors = [_random_boxes(n, g) for n in level_sizes]
    total = sum(level_sizes)
    preds = [torch.randn(num_images, n, 4, generator=g) * 0.2 for n in level_sizes]
    gt_boxes = [_random_boxes(total, g) for _ in range(num_images)]
    fg_mask = torch.rand(num_images, total, generator=g) > 0.5
    return anchors, preds, gt_boxes, fg_mask


def test_dense_smooth_l1_matches_per_image_reference():
    anchors, preds, gt_boxes, fg_mask = _dense_case(9)
    transform = Box2BoxTransform((1.0, 1.0, 1.0, 1.0))
    all_anchors = torch.cat(anchors)
    all_preds = torch.cat(preds, dim=1)
    for beta in (0.0, 0.1):
        expected = 0.0
        for i in range(len(gt_boxes)):
            target = transform.get_deltas(all_anchors, gt_boxes[i])[fg_mask[i]]
            pred = all_preds[i][fg_mask[i]]
            if beta == 0.0:
                expected = expected + F.l1_loss(pred, target, reduction="sum")
            else:
                expected = expected + F.smooth_l1_loss(pred, target, beta=beta, reduction="sum")
        for anchor_input in (anchors, [Boxes(a) for a in anchors]):
            loss = _dense_box_regression_loss(
                anchor_input, transform, preds, gt_boxes, fg_mask, "smooth_l1", smooth_l1_beta=beta
            )
            torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "loss_type, reference",
    [("giou", generalized_box_iou_loss), ("diou", distance_box_iou_loss), ("ciou", complete_box_iou_loss)],
)
def test_dense_iou_losses_match_torchvision(loss_type, reference):
    anchors, preds, gt_boxes, fg_mask = _dense_case(10)
    transform = Box2BoxTransform((1.0, 1.0, 1.0, 1.0))
    all_anchors = torch.cat(anchors)
    all_preds = torch.cat(preds, dim=1)
    pred_boxes = torch.stack([transform.apply_deltas(p, all_anchors) for p in all_preds])
    expected = reference(pred_boxes[fg_mask], torch.stack(gt_boxes)[fg_mask], reduction="sum")
    loss = _dense_box_regression_loss([Boxes(a) for a in anchors], transform, preds, gt_boxes, fg_mask, loss_type)
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-4)


def test_dense_loss_gradient_and_empty_foreground():
    anchors, preds, gt_boxes, fg_mask = _dense_case(11)
    preds = [p.requires_grad_() for p in preds]
    transform = Box2BoxTransform((1.0, 1.0, 1.0, 1.0))
    loss = _dense_box_regression_loss(anchors, transform, preds, gt_boxes, fg_mask, "giou")
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in preds)
    for loss_type in ("smooth_l1", "giou", "diou", "ciou"):
        empty = _dense_box_regression_loss(anchors, transform, preds, gt_boxes, torch.zeros_like(fg_mask), loss_type)
        assert empty.item() == 0.0


def test_dense_loss_rotated_anchors_and_errors():
    g = torch.Generator().manual_seed(12)
    anchors = [RotatedBoxes(_random_rotated(6, g))]
    transform = Box2BoxTransformRotated((1.0, 1.0, 1.0, 1.0, 1.0))
    gt = [_random_rotated(6, g)]
    preds = [torch.randn(1, 6, 5, generator=g)]
    fg_mask = torch.ones(1, 6, dtype=torch.bool)
    expected = (preds[0][0] - transform.get_deltas(anchors[0].tensor, gt[0])).abs().sum()
    torch.testing.assert_close(_dense_box_regression_loss(anchors, transform, preds, gt, fg_mask), expected)
    with pytest.raises(ValueError, match="box_reg_loss_type"):
        _dense_box_regression_loss(anchors, transform, preds, gt, fg_mask, "l2")
    with pytest.raises(ValueError, match="do not agree"):
        _dense_box_regression_loss(anchors, transform, preds, gt, fg_mask[:, :3])
