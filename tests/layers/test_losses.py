import pytest
import torch
import torchvision
from torch.nn import functional as F

from detzoo.layers import ciou_loss, diou_loss, giou_loss, smooth_l1_loss

PEERS = {
    diou_loss: torchvision.ops.distance_box_iou_loss,
    ciou_loss: torchvision.ops.complete_box_iou_loss,
    giou_loss: torchvision.ops.generalized_box_iou_loss,
}


def _random_boxes(n, generator, dtype=torch.float64):
    xy = torch.rand(n, 2, generator=generator, dtype=dtype) * 50
    wh = torch.rand(n, 2, generator=generator, dtype=dtype) * 30 + 0.5
    return torch.cat([xy, xy + wh], dim=1)


def _box_pairs(dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    boxes1, boxes2 = _random_boxes(40, generator, dtype), _random_boxes(40, generator, dtype)
    special1 = torch.tensor(
        [
            [0, 0, 10, 10],  # identical
            [0, 0, 10, 10],  # disjoint
            [0, 0, 10, 10],  # touching edge
            [2, 2, 4, 4],  # nested inside
            [0, 0, 10, 20],  # same center, other aspect
        ],
        dtype=dtype,
    )
    special2 = torch.tensor(
        [[0, 0, 10, 10], [20, 30, 25, 40], [10, 0, 20, 10], [0, 0, 10, 10], [0, 5, 10, 15]],
        dtype=dtype,
    )
    return torch.cat([boxes1, special1]), torch.cat([boxes2, special2])


@pytest.mark.parametrize("loss", [diou_loss, ciou_loss, giou_loss], ids=lambda f: f.__name__)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_equals_torchvision(loss, reduction):
    boxes1, boxes2 = _box_pairs()
    torch.testing.assert_close(
        loss(boxes1, boxes2, reduction=reduction), PEERS[loss](boxes1, boxes2, reduction=reduction)
    )


@pytest.mark.parametrize("loss", [diou_loss, ciou_loss], ids=lambda f: f.__name__)
def test_gradient_equals_torchvision(loss):
    boxes1, boxes2 = _box_pairs()
    ours_input = boxes1.clone().requires_grad_(True)
    peer_input = boxes1.clone().requires_grad_(True)
    (ours,) = torch.autograd.grad(loss(ours_input, boxes2, reduction="sum"), ours_input)
    (peer,) = torch.autograd.grad(PEERS[loss](peer_input, boxes2, reduction="sum"), peer_input)
    torch.testing.assert_close(ours, peer)


def test_diou_gradcheck():
    # (ciou_loss holds alpha constant in backward on purpose, so its gradient is not the
    # numerical one; it is compared with torchvision's above.) The random pairs stay clear of
    # the kinks of min / max / clamp, where a numerical gradient is undefined.
    boxes1, boxes2 = _box_pairs()
    boxes1, boxes2 = boxes1[:10].requires_grad_(True), boxes2[:10]
    assert torch.autograd.gradcheck(lambda b: diou_loss(b, boxes2, reduction="none"), (boxes1,))


@pytest.mark.parametrize("loss", [diou_loss, ciou_loss], ids=lambda f: f.__name__)
def test_hand_computed_values(loss):
    # Disjoint squares of side 2 with centers (1, 1) and (4, 1): IoU 0, enclosing box 5 x 2.
    boxes1, boxes2 = torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[3.0, 0, 5, 2]])
    torch.testing.assert_close(loss(boxes1, boxes2), torch.tensor([1 + 9 / 29]))
    identical = torch.tensor([[1.0, 2, 4, 8]])
    torch.testing.assert_close(loss(identical, identical), torch.zeros(1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("loss", [diou_loss, ciou_loss], ids=lambda f: f.__name__)
def test_single_box_and_empty(loss):
    boxes1, boxes2 = _box_pairs()
    single = loss(boxes1[0], boxes2[0])
    assert single.shape == ()
    torch.testing.assert_close(single, loss(boxes1[:1], boxes2[:1])[0])

    empty = torch.zeros(0, 4, requires_grad=True)
    assert loss(empty, torch.zeros(0, 4)).shape == (0,)
    assert loss(empty, torch.zeros(0, 4), reduction="sum").item() == 0.0
    mean = loss(empty, torch.zeros(0, 4), reduction="mean")
    assert mean.item() == 0.0
    mean.backward()
    assert empty.grad.shape == (0, 4)


@pytest.mark.parametrize("loss", [diou_loss, ciou_loss], ids=lambda f: f.__name__)
def test_non_contiguous_and_float32(loss):
    boxes1, boxes2 = _box_pairs(torch.float32)
    transposed = boxes1.t().contiguous().t()
    assert not transposed.is_contiguous()
    torch.testing.assert_close(loss(transposed, boxes2), loss(boxes1, boxes2))
    torch.testing.assert_close(loss(boxes1, boxes2), PEERS[loss](boxes1, boxes2))


@pytest.mark.parametrize("loss", [diou_loss, ciou_loss], ids=lambda f: f.__name__)
def test_bad_inputs(loss):
    good = torch.tensor([[0.0, 0, 1, 1]])
    with pytest.raises(ValueError, match="reduction"):
        loss(good, good, reduction="max")
    with pytest.raises(ValueError, match=r"boxes1 must have shape \(N, 4\)"):
        loss(torch.zeros(2, 5), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="same shape"):
        loss(good, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="x2 >= x1"):
        loss(torch.tensor([[2.0, 0, 1, 1]]), good)


@pytest.mark.parametrize("beta", [0.0, 1e-6, 0.11, 1.0])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_smooth_l1_equals_torch(beta, reduction):
    generator = torch.Generator().manual_seed(0)
    prediction = torch.randn(30, 4, generator=generator, dtype=torch.float64)
    target = prediction + torch.randn(30, 4, generator=generator, dtype=torch.float64) * 0.2
    if beta < 1e-5:
        # fvcore's documented choice: a beta this small is plain L1 (avoids dividing by ~0).
        expected = F.l1_loss(prediction, target, reduction=reduction)
    else:
        expected = F.smooth_l1_loss(prediction, target, beta=beta, reduction=reduction)
    torch.testing.assert_close(smooth_l1_loss(prediction, target, beta=beta, reduction=reduction), expected)
