"""tools/convert-torchvision-to-detzoo.py: torchvision ResNet weights, converted and loaded
with DetectionCheckpointer, give torchvision's own features."""
import importlib.util
import os
import pickle

import torch
import torchvision

from detzoo.checkpoint import DetectionCheckpointer
from detzoo.config import get_cfg
from detzoo.layers import ShapeSpec
from detzoo.modeling import build_resnet_backbone

TOOL = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "convert-torchvision-to-detzoo.py")


def _tool():
    spec = importlib.util.spec_from_file_location("convert_tv", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_converted_resnet50_matches_torchvision(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet50().eval()
    for m in tv.modules():  # non-trivial BN statistics, so a wrong mapping shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.0)
    path = tmp_path / "R-50-tv.pkl"
    state = {k: v.detach().clone() for k, v in tv.state_dict().items()}
    with open(path, "wb") as f:
        pickle.dump(_tool().convert(state), f)

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False  # torchvision puts the stride in the 3x3 conv
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()

    class Wrapper(torch.nn.Module):  # the checkpoint's names are matched by suffix
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Module()
            self.backbone.bottom_up = backbone

    DetectionCheckpointer(Wrapper()).load(str(path))

    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ours = backbone(x)["res5"]
        t = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        theirs = tv.layer4(tv.layer3(tv.layer2(tv.layer1(t))))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
