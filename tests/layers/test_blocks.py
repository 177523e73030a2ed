import dataclasses

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from detzoo.layers import CNNBlockBase, Conv2d, DepthwiseSeparableConv2d, FrozenBatchNorm2d, ShapeSpec, get_norm


class _Block(CNNBlockBase):
    def __init__(self, in_channels, out_channels, stride):
        super().__init__(in_channels, out_channels, stride)
        norm = get_norm("BN", out_channels)
        self.conv = Conv2d(
            in_channels, out_channels, 3, stride=stride, padding=1, bias=False, norm=norm, activation=F.relu
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride), nn.BatchNorm2d(out_channels)
        )

    def forward(self, x):
        return self.conv(x) + self.shortcut(x)


class TestCNNBlockBase:
    def test_attributes(self):
        block = _Block(3, 8, 2)
        assert (block.in_channels, block.out_channels, block.stride) == (3, 8, 2)
        assert block(torch.randn(1, 3, 8, 8)).shape == (1, 8, 4, 4)

    def test_freeze(self):
        torch.manual_seed(0)
        block = _Block(3, 8, 2)
        block.train()
        block(torch.randn(4, 3, 8, 8))  # move the running statistics off their defaults
        block.eval()
        x = torch.randn(2, 3, 8, 8)
        with torch.no_grad():
            expected = block(x)
        assert block.freeze() is block
        assert isinstance(block.conv.norm, FrozenBatchNorm2d)
        assert isinstance(block.shortcut[1], FrozenBatchNorm2d)
        assert all(not p.requires_grad for p in block.parameters())
        # Frozen: training mode no longer changes the output or any statistics.
        block.train()
        torch.testing.assert_close(block(x), expected)
        torch.testing.assert_close(block(x), expected)


class TestDepthwiseSeparableConv2d:
    def test_equals_two_convolutions(self):
        torch.manual_seed(0)
        module = DepthwiseSeparableConv2d(4, 6, kernel_size=3, padding=2, dilation=2, activation2=F.relu)
        x = torch.randn(2, 4, 7, 9)
        depthwise = F.conv2d(x, module.depthwise.weight, module.depthwise.bias, padding=2, dilation=2, groups=4)
        expected = F.relu(F.conv2d(depthwise, module.pointwise.weight, module.pointwise.bias))
        torch.testing.assert_close(module(x), expected)
        assert module.depthwise.weight.shape == (4, 1, 3, 3)
        assert module.pointwise.weight.shape == (6, 4, 1, 1)

    def test_norms_and_init(self):
        module = DepthwiseSeparableConv2d(
            4, 6, norm1="BN", activation1=F.relu, norm2=lambda channels: nn.GroupNorm(2, channels)
        )
        assert module.depthwise.bias is None and module.pointwise.bias is None
        assert isinstance(module.depthwise.norm, nn.BatchNorm2d) and module.depthwise.norm.num_features == 4
        assert isinstance(module.pointwise.norm, nn.GroupNorm) and module.pointwise.norm.num_channels == 6
        plain = DepthwiseSeparableConv2d(4, 6)
        assert plain.depthwise.norm is None
        assert torch.count_nonzero(plain.depthwise.bias) == 0 and torch.count_nonzero(plain.pointwise.bias) == 0
        assert set(module.state_dict()) >= {"depthwise.weight", "depthwise.norm.running_mean", "pointwise.weight"}

    def test_empty_batch(self):
        module = DepthwiseSeparableConv2d(4, 6, norm1="BN", norm2="BN").train()
        assert module(torch.zeros(0, 4, 5, 5)).shape == (0, 6, 5, 5)


class TestShapeSpec:
    def test_fields_default_to_none(self):
        spec = ShapeSpec(channels=256, stride=4)
        assert (spec.channels, spec.height, spec.width, spec.stride) == (256, None, None, 4)
        assert ShapeSpec() == ShapeSpec(None, None, None, None)
        assert [f.name for f in dataclasses.fields(ShapeSpec)] == ["channels", "height", "width", "stride"]

    def test_equality_and_replace(self):
        spec = ShapeSpec(channels=3, height=8, width=8, stride=1)
        assert dataclasses.replace(spec, stride=2) == ShapeSpec(channels=3, height=8, width=8, stride=2)

    def test_unknown_field(self):
        with pytest.raises(TypeError):
            ShapeSpec(depth=3)
