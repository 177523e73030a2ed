"""flop / activation / parameter counts: a plain conv net against a hand count, and the
handles of detzoo's ops against the formulas documented in detzoo/utils/analysis.py."""
import torch
from torch import nn

from detzoo.layers import nms
from detzoo.layers.deform_conv import DeformConv, ModulatedDeformConv
from detzoo.layers.roi_align import ROIAlign
from detzoo.layers.roi_align_rotated import ROIAlignRotated
from detzoo.utils.analysis import (
    ADAPTIVE_SAMPLES_PER_BIN,
    FlopCountAnalysis,
    activation_count_operators,
    flop_count_operators,
    parameter_count,
    parameter_count_table,
)
from tests.export.tiny_models import random_image, tiny_model


class PlainConvNet(nn.Module):
    """conv 3x3 (3 -> 8) -> relu -> conv 1x1 (8 -> 4) -> global average -> linear (4 -> 5),
    taking and returning Detectron2-style list[dict]."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4, 5)

    def forward(self, inputs):
        x = torch.relu(self.conv1(inputs[0]["image"][None]))
        x = self.conv2(x).mean(dim=(2, 3))
        return [{"logits": self.fc(x)}]


class _OpModel(nn.Module):
    """Runs one op module on the tensors of inputs[0] (in the order of `keys`)."""

    def __init__(self, op, keys):
        super().__init__()
        self.op, self.keys = op, keys

    def forward(self, inputs):
        return [{"out": self.op(*[inputs[0][k] for k in self.keys])}]


def _rois(num, columns, size=32.0):
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(num, 2, generator=generator) * size / 2
    wh = torch.rand(num, 2, generator=generator) * size / 2 + 1
    boxes = torch.cat([xy, xy + wh], dim=1) if columns == 5 else torch.cat([xy + wh / 2, wh, torch.rand(num, 1) * 90], dim=1)
    return torch.cat([torch.zeros(num, 1), boxes], dim=1)


def _flops(model, inputs):
    return FlopCountAnalysis(model, inputs).by_operator()


def test_plain_conv_net_equals_hand_count():
    height, width = 16, 20
    counts = flop_count_operators(PlainConvNet(), [{"image": torch.rand(3, height, width)}])
    conv1 = 8 * height * width * (3 * 3 * 3)  # outputs x multiply-adds per output
    conv2 = 4 * height * width * 8
    linear = 5 * 4
    assert counts["conv"] * 1e9 == conv1 + conv2
    assert counts["linear"] * 1e9 == linear
    assert set(counts) == {"conv", "linear"}


def test_roi_align_flops():
    features = {"features": torch.rand(1, 16, 32, 32), "rois": _rois(5, 5)}
    outputs = 5 * 16 * 7 * 7
    for sampling_ratio, samples in ((3, 9), (1, 1), (0, ADAPTIVE_SAMPLES_PER_BIN)):
        model = _OpModel(ROIAlign((7, 7), 0.5, sampling_ratio, aligned=True), ["features", "rois"])
        assert _flops(model, [features])["roi_align"] == outputs * samples * 4


def test_roi_align_rotated_flops():
    inputs = {"features": torch.rand(1, 4, 16, 16), "rois": _rois(3, 6, 16.0)}
    model = _OpModel(ROIAlignRotated((5, 4), 1.0, 2), ["features", "rois"])
    assert _flops(model, [inputs])["roi_align_rotated"] == 3 * 4 * 5 * 4 * (2 * 2) * 4


def test_deform_conv_flops():
    n, c_in, c_out, size = 1, 4, 6, 8
    x = torch.rand(n, c_in, size, size)
    offset = torch.zeros(n, 2 * 3 * 3, size, size)
    mask = torch.ones(n, 3 * 3, size, size)
    positions = n * size * size
    convolution = positions * c_out * c_in * 3 * 3
    v1 = _OpModel(DeformConv(c_in, c_out, 3, padding=1), ["x", "offset"])
    assert _flops(v1, [{"x": x, "offset": offset}])["deform_conv"] == convolution + positions * c_in * 9 * 4
    v2 = _OpModel(ModulatedDeformConv(c_in, c_out, 3, padding=1), ["x", "offset", "mask"])
    assert _flops(v2, [{"x": x, "offset": offset, "mask": mask}])["deform_conv"] == convolution + positions * c_in * 9 * 5


def test_nms_flops():
    boxes = _rois(10, 5)[:, 1:]
    model = _OpModel(lambda b, s: nms(b, s, 0.5), ["boxes", "scores"])
    assert _flops(model, [{"boxes": boxes, "scores": torch.rand(10)}])["nms"] == 10 * 9 // 2


def test_roi_align_activations():
    model = _OpModel(ROIAlign((7, 7), 0.5, 2), ["features", "rois"])
    counts = activation_count_operators(model, [{"features": torch.rand(1, 16, 32, 32), "rois": _rois(5, 5)}])
    assert counts["roi_align"] * 1e6 == 5 * 16 * 7 * 7


def test_mask_rcnn_counts_every_detzoo_op():
    model = tiny_model("mask_rcnn")
    flops = FlopCountAnalysis(model, [{"image": random_image(0)}])
    by_operator = flops.by_operator()
    assert by_operator["roi_align"] > 0 and by_operator["nms"] > 0 and by_operator["conv"] > 0
    assert not [op for op in flops.unsupported_ops() if op.startswith("detzoo::")]
    assert not model.training


def test_parameter_count_table():
    model = PlainConvNet()
    assert parameter_count(model)[""] == (8 * 3 * 9 + 8) + (4 * 8 + 4) + (5 * 4 + 5)
    table = parameter_count_table(model)
    assert "conv1.weight" in table and "(8, 3, 3, 3)" in table and "fc.bias" in table
