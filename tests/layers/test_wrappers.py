import pytest
import torch
from torch import nn
from torch.nn import functional as F

from detzoo.layers import (
    BatchNorm2d,
    Conv2d,
    ConvTranspose2d,
    Linear,
    cat,
    cross_entropy,
    empty_input_loss_func_wrapper,
    interpolate,
    move_device_like,
    nonzero_tuple,
    shapes_to_tensor,
)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:FutureWarning")


def _conv_with_norm(activation=F.relu):
    torch.manual_seed(0)
    conv = Conv2d(3, 8, kernel_size=3, padding=1, bias=False, norm=nn.BatchNorm2d(8), activation=activation)
    with torch.no_grad():
        conv.norm.running_mean.uniform_(-1, 1)
        conv.norm.running_var.uniform_(0.5, 2)
        conv.norm.weight.uniform_(0.5, 2)
        conv.norm.bias.uniform_(-1, 1)
    return conv.eval()


class TestConv2d:
    def test_equals_manual_composition(self):
        conv = _conv_with_norm()
        x = torch.randn(2, 3, 9, 11)
        expected = F.relu(conv.norm(F.conv2d(x, conv.weight, None, padding=1)))
        torch.testing.assert_close(conv(x), expected)

    def test_plain_conv_equals_nn_conv2d(self):
        ours = Conv2d(4, 6, kernel_size=3, stride=2, padding=1, dilation=1, groups=2)
        reference = nn.Conv2d(4, 6, kernel_size=3, stride=2, padding=1, groups=2)
        reference.load_state_dict(ours.state_dict())
        x = torch.randn(2, 4, 10, 7)
        torch.testing.assert_close(ours(x), reference(x))

    def test_state_dict_keys_are_detectron2s(self):
        conv = _conv_with_norm()
        assert set(conv.state_dict()) == {
            "weight",
            "norm.weight",
            "norm.bias",
            "norm.running_mean",
            "norm.running_var",
            "norm.num_batches_tracked",
        }
        assert set(Conv2d(3, 4, 1).state_dict()) == {"weight", "bias"}
        # A module activation adds no parameters or buffers.
        assert set(Conv2d(3, 4, 1, activation=nn.ReLU()).state_dict()) == {"weight", "bias"}

    def test_is_an_nn_conv2d(self):
        assert isinstance(Conv2d(3, 4, 1), nn.Conv2d)

    @pytest.mark.parametrize("training", [False, True])
    def test_empty_batch(self, training):
        conv = _conv_with_norm().train(training)
        x = torch.zeros(0, 3, 9, 11, requires_grad=True)
        y = conv(x)
        assert y.shape == (0, 8, 9, 11)
        y.sum().backward()
        assert x.grad.shape == x.shape
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() == 0

    def test_non_contiguous_input(self):
        conv = _conv_with_norm()
        x = torch.randn(2, 11, 9, 3).permute(0, 3, 2, 1)
        torch.testing.assert_close(conv(x), conv(x.contiguous()))

    def test_padding_mode_is_honoured(self):
        ours = Conv2d(2, 2, 3, padding=1, padding_mode="reflect")
        reference = nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")
        reference.load_state_dict(ours.state_dict())
        x = torch.randn(1, 2, 5, 5)
        torch.testing.assert_close(ours(x), reference(x))


def test_aliases_are_torch_objects():
    assert ConvTranspose2d is nn.ConvTranspose2d
    assert BatchNorm2d is nn.BatchNorm2d
    assert Linear is nn.Linear
    assert interpolate is F.interpolate


class TestCat:
    def test_single_tensor_is_not_copied(self):
        t = torch.randn(3, 2)
        assert cat([t]) is t
        assert cat((t,), dim=1) is t

    def test_equals_torch_cat(self):
        a, b = torch.randn(2, 3), torch.randn(4, 3)
        torch.testing.assert_close(cat([a, b]), torch.cat([a, b]))
        torch.testing.assert_close(cat([a.t(), b.t()], dim=1), torch.cat([a.t(), b.t()], dim=1))

    def test_empty_tensors(self):
        a, b = torch.zeros(0, 4), torch.zeros(0, 4)
        assert cat([a, b]).shape == (0, 4)
        assert cat([a, torch.ones(2, 4)]).shape == (2, 4)

    def test_rejects_a_tensor(self):
        with pytest.raises(TypeError, match="list or tuple"):
            cat(torch.zeros(2, 2))


class TestNonzeroTuple:
    def test_matches_numpy(self):
        x = torch.tensor([[0, 1, 0], [2, 0, 3]])
        rows, cols = nonzero_tuple(x)
        expected_rows, expected_cols = x.numpy().nonzero()
        assert rows.tolist() == expected_rows.tolist()
        assert cols.tolist() == expected_cols.tolist()

    def test_empty_input(self):
        (idx,) = nonzero_tuple(torch.zeros(0, dtype=torch.bool))
        assert idx.shape == (0,) and idx.dtype == torch.long
        rows, cols = nonzero_tuple(torch.zeros(3, 4, dtype=torch.bool))
        assert rows.numel() == 0 and cols.numel() == 0

    def test_scalar_is_a_vector_of_one(self):
        (idx,) = nonzero_tuple(torch.tensor(True))
        assert idx.tolist() == [0]


class TestCrossEntropy:
    def test_equals_torch_when_not_empty(self):
        logits, target = torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2])
        for reduction in ("mean", "sum", "none"):
            torch.testing.assert_close(
                cross_entropy(logits, target, reduction=reduction),
                F.cross_entropy(logits, target, reduction=reduction),
            )
        weight = torch.rand(4) + 0.5
        torch.testing.assert_close(
            cross_entropy(logits, target, weight=weight), F.cross_entropy(logits, target, weight=weight)
        )

    def test_empty_mean_is_zero_with_gradient(self):
        logits = torch.zeros(0, 4, requires_grad=True)
        loss = cross_entropy(logits, torch.zeros(0, dtype=torch.long))
        assert loss.item() == 0.0
        loss.backward()
        assert logits.grad.shape == (0, 4)
        assert torch.isnan(F.cross_entropy(logits, torch.zeros(0, dtype=torch.long)))

    def test_empty_sum_and_none(self):
        logits, target = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
        assert cross_entropy(logits, target, reduction="sum").item() == 0.0
        assert cross_entropy(logits, target, reduction="none").shape == (0,)

    def test_wrapper_on_another_loss(self):
        wrapped = empty_input_loss_func_wrapper(F.l1_loss)
        assert wrapped(torch.zeros(0), torch.zeros(0)).item() == 0.0
        a, b = torch.randn(3), torch.randn(3)
        torch.testing.assert_close(wrapped(a, b), F.l1_loss(a, b))


class TestShapesToTensor:
    def test_ints(self):
        t = shapes_to_tensor([3, 5])
        assert t.tolist() == [3, 5] and t.dtype == torch.long

    def test_traced_sizes_stay_dynamic(self):
        def fn(x):
            return shapes_to_tensor([x.shape[0], x.shape[1]]) * 2

        traced = torch.jit.trace(fn, torch.zeros(3, 4))
        assert traced(torch.zeros(5, 7)).tolist() == [10, 14]


def test_move_device_like():
    src, dst = torch.arange(3), torch.zeros(1, dtype=torch.float64)
    moved = move_device_like(src, dst)
    assert moved.device == dst.device and moved.dtype == src.dtype
    assert torch.equal(moved, src)
