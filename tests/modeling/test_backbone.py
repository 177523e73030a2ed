"""Backbones: Detectron2 state-dict and feature parity, shapes and strides, freezing, gradients,
and numerical agreement with torchvision's ResNet / ResNeXt / FPN / deform_conv2d."""
import importlib
import json
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck as TVBottleneck
from torchvision.models.resnet import ResNet as TVResNet
from torchvision.ops import FeaturePyramidNetwork, deform_conv2d
from torchvision.ops import feature_pyramid_network as tv_fpn

from detzoo.config import get_cfg
from detzoo.layers import CNNBlockBase, FrozenBatchNorm2d, ShapeSpec
from detzoo.modeling.backbone import (
    BACKBONE_REGISTRY,
    FPN,
    Backbone,
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    DeformBottleneckBlock,
    LastLevelMaxPool,
    LastLevelP6P7,
    ResNet,
    ResNetBlockBase,
    build_backbone,
    make_stage,
)

PARITY_DIR = Path(__file__).resolve().parents[3] / "shared" / "parity"
KEYS_DIR = PARITY_DIR / "keys"
FPN_FEATURES = ["res2", "res3", "res4", "res5"]
RETINA_FEATURES = ["res3", "res4", "res5"]

# The cfg values (as Detectron2's model-zoo YAML files set them) that select each backbone.
_FPN = {
    "MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone",
    "MODEL.RESNETS.OUT_FEATURES": FPN_FEATURES,
    "MODEL.FPN.IN_FEATURES": FPN_FEATURES,
}
_X101 = {
    "MODEL.RESNETS.DEPTH": 101,
    "MODEL.RESNETS.NUM_GROUPS": 32,
    "MODEL.RESNETS.WIDTH_PER_GROUP": 8,
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
}
_R18 = {"MODEL.RESNETS.DEPTH": 18, "MODEL.RESNETS.RES2_OUT_CHANNELS": 64}
_DCONV_C3_C5 = {"MODEL.RESNETS.DEFORM_ON_PER_STAGE": [False, True, True, True]}
_GN = {"MODEL.RESNETS.NORM": "GN", "MODEL.FPN.NORM": "GN", "MODEL.RESNETS.STRIDE_IN_1X1": False}
PARITY_CASES = {
    "COCO-Detection__faster_rcnn_R_50_FPN_1x": _FPN,
    "COCO-Detection__faster_rcnn_R_101_FPN_3x": {**_FPN, "MODEL.RESNETS.DEPTH": 101},
    "COCO-Detection__faster_rcnn_X_101_32x8d_FPN_3x": {**_FPN, **_X101},
    "COCO-Detection__faster_rcnn_R_50_C4_1x": {"MODEL.RESNETS.OUT_FEATURES": ["res4"]},
    "COCO-Detection__faster_rcnn_R_50_DC5_1x": {
        "MODEL.RESNETS.OUT_FEATURES": ["res5"],
        "MODEL.RESNETS.RES5_DILATION": 2,
    },
    "Misc__mask_rcnn_R_50_FPN_1x_dconv_c3-c5": {**_FPN, **_DCONV_C3_C5},
    "Misc__mask_rcnn_R_50_FPN_3x_gn": {**_FPN, **_GN},
    "Misc__mask_rcnn_R_50_FPN_3x_syncbn": {
        **_FPN,
        "MODEL.RESNETS.NORM": "SyncBN",
        "MODEL.FPN.NORM": "SyncBN",
        "MODEL.BACKBONE.FREEZE_AT": 0,
    },
    "Misc__panoptic_fpn_R_101_dconv_cascade_gn_3x": {
        **_FPN,
        **_GN,
        **_DCONV_C3_C5,
        "MODEL.RESNETS.DEPTH": 101,
    },
    "Misc__cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv": {
        **_FPN,
        **_X101,
        **_DCONV_C3_C5,
        "MODEL.RESNETS.DEPTH": 152,
    },
    "COCO-Detection__retinanet_R_50_FPN_1x": {
        "MODEL.BACKBONE.NAME": "build_retinanet_resnet_fpn_backbone",
        "MODEL.RESNETS.OUT_FEATURES": RETINA_FEATURES,
        "MODEL.FPN.IN_FEATURES": RETINA_FEATURES,
    },
}


def make_cfg(overrides=None):
    cfg = get_cfg()
    for dotted, value in (overrides or {}).items():
        *parents, leaf = dotted.split(".")
        node = cfg
        for name in parents:
            node = node[name]
        if leaf not in node:
            raise KeyError(f"test cfg sets unknown key {dotted}")
        node[leaf] = value
    return cfg


def build(overrides=None):
    return build_backbone(make_cfg(overrides))


def _expected_backbone_keys(config_name):
    path = KEYS_DIR / f"{config_name}.json"
    if not path.is_file():
        pytest.skip(f"{path} not found (the shared parity data sits beside the repository)")
    keys = json.loads(path.read_text())["keys"]
    prefix = "backbone."
    return {
        k[len(prefix):]: (tuple(shape), dtype) for k, (shape, dtype) in keys.items() if k.startswith(prefix)
    }


# ------------------------------------------------------------------ Detectron2 state-dict parity
@pytest.mark.parametrize("config_name", sorted(PARITY_CASES))
def test_state_dict_matches_detectron2(config_name):
    expected = _expected_backbone_keys(config_name)
    # Shapes and names only: the meta device skips allocating and initializing the weights.
    with torch.device("meta"):
        backbone = build(PARITY_CASES[config_name])
    state = backbone.state_dict()
    ours = {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in state.items()}
    missing, unexpected = sorted(set(expected) - set(ours)), sorted(set(ours) - set(expected))
    assert not missing and not unexpected, f"missing {missing[:10]}, unexpected {unexpected[:10]}"
    wrong = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert not wrong, f"(ours, Detectron2's) shape/dtype differ: {dict(list(wrong.items())[:10])}"
    assert list(ours) == list(expected), "same keys, but not in Detectron2's order"


def _parity_module(name):
    """A module of the shared parity kit (weights.py, common.py), or skip without it."""
    if not (PARITY_DIR / f"{name}.py").is_file():
        pytest.skip(f"{PARITY_DIR} not found (the shared parity data sits beside the repository)")
    if str(PARITY_DIR) not in sys.path:
        sys.path.insert(0, str(PARITY_DIR))
    return importlib.import_module(name)


def _padded_batch(images, size_divisibility):
    """Images (3, Hi, Wi) -> (N, 3, H, W), zero-padded at the bottom and right to a common size."""
    height = max(i.shape[1] for i in images)
    width = max(i.shape[2] for i in images)
    if size_divisibility > 1:
        height = -(-height // size_divisibility) * size_divisibility
        width = -(-width // size_divisibility) * size_divisibility
    return torch.stack([F.pad(i, (0, width - i.shape[2], 0, height - i.shape[1])) for i in images])


# Configs with a full reference in parity/ref, and the backbone cfg each one uses.
REFERENCE_CASES = {
    "COCO-Detection__faster_rcnn_R_50_FPN_1x": PARITY_CASES["COCO-Detection__faster_rcnn_R_50_FPN_1x"],
    "COCO-Detection__retinanet_R_50_FPN_1x": PARITY_CASES["COCO-Detection__retinanet_R_50_FPN_1x"],
    "COCO-InstanceSegmentation__mask_rcnn_R_50_C4_1x": PARITY_CASES["COCO-Detection__faster_rcnn_R_50_C4_1x"],
}


@pytest.mark.parametrize(
    "config_name",
    [
        "COCO-Detection__faster_rcnn_R_50_FPN_1x",
        pytest.param("COCO-Detection__retinanet_R_50_FPN_1x", marks=pytest.mark.slow),
        pytest.param("COCO-InstanceSegmentation__mask_rcnn_R_50_C4_1x", marks=pytest.mark.slow),
    ],
)
def test_features_match_detectron2_reference(config_name):
    """Detectron2's own backbone outputs (statistics and samples recorded in the parity
    references) under the deterministic weights of weights.py, on the two parity images."""
    weights, common = _parity_module("weights"), _parity_module("common")
    reference = json.loads((PARITY_DIR / "ref" / f"{config_name}.json").read_text())
    cfg = make_cfg(REFERENCE_CASES[config_name])
    backbone = build_backbone(cfg).eval()
    prefix = "backbone."
    keys = {k: v for k, v in reference["keys"].items() if k.startswith(prefix)}
    filled = weights.fill({k: tuple(v[0]) for k, v in keys.items()}, {k: v[1] for k, v in keys.items()})
    backbone.load_state_dict({k[len(prefix):]: torch.from_numpy(v) for k, v in filled.items()})
    # What the meta-architecture does before the backbone: normalize, pad to size_divisibility.
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1)
    images = [(common.read_image(r, cfg.INPUT.FORMAT) - mean) / std for r in common.load_gt()]
    with torch.no_grad():
        features = backbone(_padded_batch(images, backbone.size_divisibility))
    assert sorted(features) == sorted(reference["features"])
    for name, expected in reference["features"].items():
        values = features[name]
        assert list(values.shape) == expected["shape"], name
        # The parity checker's tolerance: 1e-3 of the level's standard deviation.
        tolerance = 1e-3 * expected["std"]
        samples = values.reshape(-1)[torch.tensor(expected["positions"])]
        torch.testing.assert_close(samples, torch.tensor(expected["samples"]), rtol=0, atol=tolerance)
        assert abs(values.mean().item() - expected["mean"]) < tolerance, name
        assert abs(values.std().item() - expected["std"]) < tolerance, name


# ---------------------------------------------------------------------------- shapes and strides
def _check_outputs(backbone, outputs, expected):
    """expected: name -> (channels, stride, H, W) for a 224 x 320 input."""
    assert list(outputs) == list(expected)
    shapes = backbone.output_shape()
    assert list(shapes) == list(expected)
    for name, (channels, stride, height, width) in expected.items():
        assert tuple(outputs[name].shape) == (1, channels, height, width), name
        assert shapes[name] == ShapeSpec(channels=channels, stride=stride), name


def _forward_224x320(backbone):
    backbone.eval()
    with torch.no_grad():
        return backbone(torch.randn(1, 3, 224, 320))


def test_fpn_outputs_shapes_and_strides():
    backbone = build(PARITY_CASES["COCO-Detection__faster_rcnn_R_50_FPN_1x"])
    expected = {
        "p2": (256, 4, 56, 80),
        "p3": (256, 8, 28, 40),
        "p4": (256, 16, 14, 20),
        "p5": (256, 32, 7, 10),
        "p6": (256, 64, 4, 5),
    }
    _check_outputs(backbone, _forward_224x320(backbone), expected)
    assert backbone.size_divisibility == 32
    assert backbone.padding_constraints == {"square_size": 0}
    bottom_up_shapes = backbone.bottom_up.output_shape()
    assert [(s.channels, s.stride) for s in bottom_up_shapes.values()] == [
        (256, 4),
        (512, 8),
        (1024, 16),
        (2048, 32),
    ]


def test_retinanet_p6_p7_from_res5():
    backbone = build(PARITY_CASES["COCO-Detection__retinanet_R_50_FPN_1x"])
    assert backbone.top_block.in_feature == "res5"
    expected = {
        "p3": (256, 8, 28, 40),
        "p4": (256, 16, 14, 20),
        "p5": (256, 32, 7, 10),
        "p6": (256, 64, 4, 5),
        "p7": (256, 128, 2, 3),
    }
    _check_outputs(backbone, _forward_224x320(backbone), expected)


def test_c4_and_dc5_resnets():
    c4 = build(PARITY_CASES["COCO-Detection__faster_rcnn_R_50_C4_1x"])
    assert isinstance(c4, ResNet) and c4.stage_names == ("res2", "res3", "res4")
    _check_outputs(c4, _forward_224x320(c4), {"res4": (1024, 16, 14, 20)})
    assert c4.size_divisibility == 0 and c4.padding_constraints == {}

    dc5 = build(PARITY_CASES["COCO-Detection__faster_rcnn_R_50_DC5_1x"])
    _check_outputs(dc5, _forward_224x320(dc5), {"res5": (2048, 16, 14, 20)})
    conv2 = dc5.res5[1].conv2
    assert conv2.dilation == (2, 2) and conv2.padding == (2, 2)


def test_resnet18_basic_blocks():
    backbone = build({**_R18, "MODEL.RESNETS.OUT_FEATURES": ["stem"] + FPN_FEATURES})
    assert all(isinstance(block, BasicBlock) for stage in backbone.stages for block in stage)
    assert [len(stage) for stage in backbone.stages] == [2, 2, 2, 2]
    assert backbone.res2[0].shortcut is None and backbone.res3[0].shortcut is not None
    expected = {
        "stem": (64, 4, 56, 80),
        "res2": (64, 4, 56, 80),
        "res3": (128, 8, 28, 40),
        "res4": (256, 16, 14, 20),
        "res5": (512, 32, 7, 10),
    }
    _check_outputs(backbone, _forward_224x320(backbone), expected)


def test_only_needed_stages_are_built():
    backbone = build({"MODEL.RESNETS.OUT_FEATURES": ["res3"]})
    assert backbone.stage_names == ("res2", "res3")
    assert not any(k.startswith("res4") for k in backbone.state_dict())


# ------------------------------------------------------------------------------------- freezing
def _frozen_prefixes(module):
    return {name.split(".")[0] for name, p in module.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize(
    "freeze_at, frozen",
    [(0, set()), (1, {"stem"}), (2, {"stem", "res2"}), (5, {"stem", "res2", "res3", "res4", "res5"})],
)
def test_freeze_at(freeze_at, frozen):
    overrides = {**_R18, "MODEL.RESNETS.OUT_FEATURES": ["res5"], "MODEL.RESNETS.NORM": "BN"}
    resnet = build({**overrides, "MODEL.BACKBONE.FREEZE_AT": freeze_at})
    assert _frozen_prefixes(resnet) == frozen
    for name, module in resnet.named_children():
        norms = [m for m in module.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
        wanted = FrozenBatchNorm2d if name in frozen else nn.BatchNorm2d
        assert norms and all(type(m) is wanted for m in norms), name


def test_fpn_freezes_only_bottom_up():
    backbone = build({**_FPN, "MODEL.BACKBONE.FREEZE_AT": 2})
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("bottom_up.stem.", "bottom_up.res2.")) for n in frozen)
    assert all(p.requires_grad for n, p in backbone.named_parameters() if n.startswith("fpn_"))


# ------------------------------------------------------------------------- gradients, smoke runs
@pytest.mark.parametrize(
    "config_name",
    [
        "COCO-Detection__faster_rcnn_R_50_FPN_1x",
        "Misc__mask_rcnn_R_50_FPN_3x_gn",
        "Misc__mask_rcnn_R_50_FPN_1x_dconv_c3-c5",
        "COCO-Detection__retinanet_R_50_FPN_1x",
    ],
)
def test_forward_backward_gives_finite_grads(config_name):
    torch.manual_seed(0)
    overrides = dict(PARITY_CASES[config_name])
    if config_name.endswith("dconv_c3-c5"):
        overrides["MODEL.RESNETS.DEFORM_MODULATED"] = True  # exercise the modulated variant too
    backbone = build(overrides)
    backbone.train()
    outputs = backbone(torch.randn(2, 3, 64, 96))
    sum(out.square().mean() for out in outputs.values()).backward()
    trainable = [(n, p) for n, p in backbone.named_parameters() if p.requires_grad]
    assert trainable
    for name, param in trainable:
        assert param.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(param.grad).all(), name


def test_build_is_fast():
    cfg = make_cfg(_FPN)
    build_backbone(cfg)  # warm-up: imports, first allocations
    start = time.perf_counter()
    build_backbone(cfg)
    elapsed = time.perf_counter() - start
    # The target is < 1 s; the bound is loose so that a busy machine does not fail it.
    assert elapsed < 3.0, f"building R50-FPN took {elapsed:.2f} s"


# ------------------------------------------------------------------------ torchvision reference
def _randomize_norms(model, generator):
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.weight.data = torch.rand(c, generator=generator) + 0.5
            module.bias.data = torch.randn(c, generator=generator) * 0.1
            module.running_mean = torch.randn(c, generator=generator) * 0.1
            module.running_var = torch.rand(c, generator=generator) + 0.5


def _torchvision_to_detzoo_name(name):
    """Torchvision ResNet parameter name -> ours (`layer1.0.bn2.weight` -> `res2.0.conv2.norm.weight`)."""
    parts = name.split(".")
    if parts[0] == "conv1":
        return "stem.conv1." + ".".join(parts[1:])
    if parts[0] == "bn1":
        return "stem.conv1.norm." + ".".join(parts[1:])
    if parts[0] == "fc":
        return "linear." + ".".join(parts[1:])
    stage = f"res{int(parts[0][len('layer'):]) + 1}.{parts[1]}"
    layer, rest = parts[2], parts[3:]
    if layer == "downsample":
        inner = "shortcut" if rest[0] == "0" else "shortcut.norm"
        return ".".join([stage, inner] + rest[1:])
    if layer.startswith("bn"):
        return ".".join([stage, "conv" + layer[2:], "norm"] + rest)
    return ".".join([stage, layer] + rest)


def _copy_torchvision_weights(tv_model, ours):
    state = {_torchvision_to_detzoo_name(k): v for k, v in tv_model.state_dict().items()}
    ours.load_state_dict(state, strict=True)


def _torchvision_features(tv_model, x):
    out = {}
    x = tv_model.maxpool(tv_model.relu(tv_model.bn1(tv_model.conv1(x))))
    for i in range(1, 5):
        x = getattr(tv_model, f"layer{i}")(x)
        out[f"res{i + 1}"] = x
    out["linear"] = tv_model.fc(torch.flatten(tv_model.avgpool(x), 1))
    return out


def _assert_close(actual, expected, name):
    # float32 with different conv algorithms: relative to the feature's scale.
    scale = expected.abs().max().clamp(min=1e-6)
    err = (actual - expected).abs().max() / scale
    assert err < 1e-4, f"{name}: max error {err:.2e} of the feature scale"


def _classifier_resnet(stages):
    """Our ResNet with BN and a 1000-way classifier, in torchvision's layout."""
    return ResNet(BasicStem(norm="BN"), stages, num_classes=1000, out_features=FPN_FEATURES + ["linear"])


def _bottleneck_stages(num_blocks, bottleneck_channels=64, num_groups=1, res5_dilation=1):
    """Bottleneck stages with the stride in the 3x3 conv, as torchvision puts it."""
    in_channels, out_channels = (64, 256, 512, 1024), (256, 512, 1024, 2048)
    stages = []
    for i, n in enumerate(num_blocks):
        dilation = res5_dilation if i == 3 else 1
        stride = 1 if i == 0 or dilation > 1 else 2
        stages.append(
            make_stage(
                BottleneckBlock,
                n,
                in_channels=in_channels[i],
                out_channels=out_channels[i],
                bottleneck_channels=bottleneck_channels * 2**i,
                num_groups=num_groups,
                dilation=dilation,
                stride_per_block=[stride] + [1] * (n - 1),
                norm="BN",
            )
        )
    return stages


def _compare_with_torchvision(tv_model, ours, names, seed, size=(96, 128)):
    generator = torch.Generator().manual_seed(seed)
    _randomize_norms(tv_model, generator)
    _copy_torchvision_weights(tv_model, ours)
    tv_model.eval()
    ours.eval()
    x = torch.randn(2, 3, *size, generator=generator)
    with torch.no_grad():
        expected, actual = _torchvision_features(tv_model, x), ours(x)
    for name in names:
        _assert_close(actual[name], expected[name], name)


@pytest.mark.parametrize("arch", ["resnet50", "resnet18", "resnext"])
def test_resnet_matches_torchvision(arch):
    torch.manual_seed(0)
    if arch == "resnet50":
        tv_model = torchvision.models.resnet50(weights=None)
        ours = _classifier_resnet(ResNet.make_default_stages(50, stride_in_1x1=False, norm="BN"))
    elif arch == "resnet18":
        tv_model = torchvision.models.resnet18(weights=None)
        ours = _classifier_resnet(ResNet.make_default_stages(18, norm="BN"))
    else:  # a shallow ResNeXt 32x8d: 32 groups of 8 channels in the first 3x3 convs
        tv_model = TVResNet(TVBottleneck, [1, 2, 1, 1], groups=32, width_per_group=8)
        ours = _classifier_resnet(_bottleneck_stages([1, 2, 1, 1], bottleneck_channels=256, num_groups=32))
    _compare_with_torchvision(tv_model, ours, FPN_FEATURES + ["linear"], seed=0)


def test_dilated_res5_matches_torchvision_with_dilated_convs():
    torch.manual_seed(1)
    tv_model = TVResNet(TVBottleneck, [1, 1, 1, 2])
    # Detectron2's DC5: every res5 block dilates its 3x3 conv by 2 and res5 does not stride.
    # (torchvision's own replace_stride_with_dilation leaves the first block undilated.)
    for block in tv_model.layer4:
        block.conv2.dilation, block.conv2.padding, block.conv2.stride = (2, 2), (2, 2), (1, 1)
    tv_model.layer4[0].downsample[0].stride = (1, 1)
    ours = _classifier_resnet(_bottleneck_stages([1, 1, 1, 2], res5_dilation=2))
    assert ours.output_shape()["res5"] == ShapeSpec(channels=2048, stride=16)
    assert ours.output_shape()["linear"] == ShapeSpec(channels=1000)
    _compare_with_torchvision(tv_model, ours, FPN_FEATURES, seed=1, size=(64, 96))


def _copy_fpn_weights(ours, tv_fpn_module, levels):
    """Our fpn_lateral{k}/fpn_output{k} -> torchvision's inner_blocks[i]/layer_blocks[i]."""
    state = {}
    for i, level in enumerate(levels):
        pairs = ((f"fpn_lateral{level}", "inner_blocks"), (f"fpn_output{level}", "layer_blocks"))
        for ours_name, tv_name in pairs:
            conv = getattr(ours, ours_name)
            state[f"{tv_name}.{i}.0.weight"] = conv.weight
            state[f"{tv_name}.{i}.0.bias"] = conv.bias
    if isinstance(ours.top_block, LastLevelP6P7):
        for key, value in ours.top_block.state_dict().items():
            state[f"extra_blocks.{key}"] = value
    tv_fpn_module.load_state_dict(state, strict=True)


@pytest.mark.parametrize("top", ["max_pool", "p6p7_from_res5", "p6p7_from_p5"])
def test_fpn_matches_torchvision(top):
    torch.manual_seed(0)
    in_features = FPN_FEATURES if top == "max_pool" else RETINA_FEATURES
    bottom_up = ResNet(BasicStem(), ResNet.make_default_stages(18), out_features=in_features)
    if top == "max_pool":
        ours_top, tv_top = LastLevelMaxPool(), tv_fpn.LastLevelMaxPool()
    elif top == "p6p7_from_res5":
        ours_top, tv_top = LastLevelP6P7(512, 256), tv_fpn.LastLevelP6P7(512, 256)
    else:  # torchvision reads P5 whenever its in and out channels agree
        ours_top, tv_top = LastLevelP6P7(256, 256, in_feature="p5"), tv_fpn.LastLevelP6P7(256, 256)
    ours = FPN(bottom_up, in_features, 256, top_block=ours_top).eval()
    for p in ours.parameters():  # c2_xavier_fill leaves zero biases; make them count
        p.data.add_(torch.randn_like(p) * 0.01)
    in_channels = [bottom_up.output_shape()[f].channels for f in in_features]
    reference = FeaturePyramidNetwork(in_channels, 256, extra_blocks=tv_top)
    _copy_fpn_weights(ours, reference, [int(f[-1]) for f in in_features])
    x = torch.randn(1, 3, 128, 192)
    with torch.no_grad():
        actual = ours(x)
        features = bottom_up(x)
        expected = list(reference({f: features[f] for f in in_features}).values())
    assert len(actual) == len(expected)
    for (name, value), ref in zip(actual.items(), expected):
        _assert_close(value, ref, name)


def test_fpn_avg_fuse_halves_the_sum():
    torch.manual_seed(0)
    overrides = {**_FPN, **_R18}
    summed = build(overrides).eval()
    averaged = build({**overrides, "MODEL.FPN.FUSE_TYPE": "avg"}).eval()
    averaged.load_state_dict(summed.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = averaged(x)
        features = summed.bottom_up(x)
        p5_inner = summed.fpn_lateral5(features["res5"])
        p4_inner = (summed.fpn_lateral4(features["res4"]) + F.interpolate(p5_inner, scale_factor=2.0)) / 2
    _assert_close(out["p5"], summed.fpn_output5(p5_inner), "p5")
    _assert_close(out["p4"], summed.fpn_output4(p4_inner), "p4")


# ------------------------------------------------------------------------- deformable blocks
def _bottleneck_reference(block, x, conv2):
    """A bottleneck block computed from its parts, `conv2(features)` being the 3x3 step."""
    out = F.relu(block.conv1(x))
    out = F.relu(block.conv2.norm(conv2(out)))
    out = block.conv3(out) + (x if block.shortcut is None else block.shortcut(x))
    return F.relu(out)


@pytest.mark.parametrize("modulated", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_deform_block_matches_torchvision_deform_conv2d(modulated, stride):
    torch.manual_seed(0)
    block = DeformBottleneckBlock(32, 64, bottleneck_channels=32, stride=stride, num_groups=2, norm="BN",
                                  deform_modulated=modulated, deform_num_groups=2)
    nn.init.normal_(block.conv2_offset.weight, std=0.05)  # non-trivial offsets and masks
    nn.init.normal_(block.conv2_offset.bias, std=0.5)
    _randomize_norms(block, torch.Generator().manual_seed(0))
    block.eval()
    x = torch.randn(2, 32, 12, 10)

    def deform_3x3(features):
        offset_mask = block.conv2_offset(features)
        num_offsets = 2 * 9 * 2
        mask = offset_mask[:, num_offsets:].sigmoid() if modulated else None
        return deform_conv2d(features, offset_mask[:, :num_offsets], block.conv2.weight, None,
                             stride=stride, padding=1, dilation=1, mask=mask)

    with torch.no_grad():
        _assert_close(block(x), _bottleneck_reference(block, x, deform_3x3), "deform block")
    assert block.conv2_offset.out_channels == (27 if modulated else 18) * 2


def test_deform_block_starts_as_a_regular_grid():
    """With its zero-initialized offset conv, a v1 block equals a plain bottleneck block."""
    torch.manual_seed(0)
    deform = DeformBottleneckBlock(16, 32, bottleneck_channels=8, stride=2, norm="BN").eval()
    plain = BottleneckBlock(16, 32, bottleneck_channels=8, stride=2, norm="BN").eval()
    state = {k: v for k, v in deform.state_dict().items() if not k.startswith("conv2_offset")}
    plain.load_state_dict(state)
    x = torch.randn(1, 16, 9, 9)
    with torch.no_grad():
        _assert_close(deform(x), plain(x), "zero-offset deform block")


# ------------------------------------------------------------------------------ API and errors
def test_make_stage_per_block_arguments_and_aliases():
    blocks = make_stage(BottleneckBlock, 3, in_channels=8, out_channels=16, bottleneck_channels=4,
                        stride_per_block=[2, 1, 1], dilation_per_block=[1, 1, 2], norm="BN")
    assert [b.stride for b in blocks] == [2, 1, 1]
    assert [b.conv2.dilation for b in blocks] == [(1, 1), (1, 1), (2, 2)]
    assert [b.in_channels for b in blocks] == [8, 16, 16]
    assert ResNetBlockBase is CNNBlockBase
    with pytest.raises(ValueError, match="stride_per_block"):
        ResNet.make_stage(BasicBlock, 2, in_channels=8, out_channels=8, stride_per_block=[1])
    with pytest.raises(ValueError, match="both"):
        ResNet.make_stage(BasicBlock, 1, in_channels=8, out_channels=8, stride=1, stride_per_block=[1])
    deprecated = ResNet.make_stage(BasicBlock, 2, 2, in_channels=8, out_channels=8)
    assert [b.stride for b in deprecated] == [2, 1]


def test_make_default_stages_depths():
    stages = ResNet.make_default_stages(34)
    assert [len(s) for s in stages] == [3, 4, 6, 3]
    assert all(isinstance(b, BasicBlock) for s in stages for b in s)
    with pytest.raises(ValueError, match="depth"):
        ResNet.make_default_stages(42)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"MODEL.RESNETS.DEPTH": 42}, "depth"),
        ({"MODEL.RESNETS.RES5_DILATION": 4}, "RES5_DILATION"),
        ({"MODEL.RESNETS.DEPTH": 18}, "RES2_OUT_CHANNELS"),
        ({"MODEL.RESNETS.OUT_FEATURES": ["res6"]}, "OUT_FEATURES"),
        ({**_FPN, "MODEL.FPN.IN_FEATURES": ["res2", "res4"]}, "twice"),
        ({**_FPN, "MODEL.FPN.IN_FEATURES": ["res4", "res5", "res6"]}, "not outputs"),
        ({**_FPN, "MODEL.FPN.FUSE_TYPE": "max"}, "fuse_type"),
    ],
)
def test_bad_config_raises_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message), torch.device("meta"):
        build(overrides)


def test_resnet_rejects_bad_arguments():
    stem = BasicStem(norm="BN")
    with pytest.raises(ValueError, match="available"):
        ResNet(stem, ResNet.make_default_stages(18), out_features=["res7"])
    with pytest.raises(ValueError, match="no blocks"):
        ResNet(stem, [[]])
    with pytest.raises(TypeError, match="CNNBlockBase"):
        ResNet(stem, [[nn.Identity()]])
    resnet = ResNet(stem, ResNet.make_default_stages(18))
    assert list(resnet.output_shape()) == ["res5"]
    with pytest.raises(ValueError, match="N, C, H, W"):
        resnet(torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match="Backbone"):
        FPN(nn.Identity(), ["res5"], 16)
    with pytest.raises(ValueError, match="top_block reads"):
        FPN(ResNet(stem, ResNet.make_default_stages(18), out_features=["res3", "res4"]), ["res3", "res4"], 16,
            top_block=LastLevelMaxPool())


def test_build_backbone_checks_the_registered_result():
    def _test_returns_a_plain_module(cfg, input_shape):
        return nn.Identity()

    name = _test_returns_a_plain_module.__name__
    BACKBONE_REGISTRY.register(_test_returns_a_plain_module)
    try:
        with pytest.raises(TypeError, match="must return a Backbone"):
            build({"MODEL.BACKBONE.NAME": name})
    finally:
        BACKBONE_REGISTRY._obj_map.pop(name)


def test_build_backbone_default_input_channels():
    cfg = make_cfg({**_R18, "MODEL.RESNETS.OUT_FEATURES": ["res2"], "MODEL.PIXEL_MEAN": [0.0],
                    "MODEL.PIXEL_STD": [1.0]})
    backbone = build_backbone(cfg)
    assert isinstance(backbone, Backbone)
    assert backbone.stem.conv1.in_channels == 1


def test_last_level_max_pool_is_stride_2_subsampling():
    x = torch.randn(1, 4, 7, 10)
    (p6,) = LastLevelMaxPool()(x)
    torch.testing.assert_close(p6, x[:, :, ::2, ::2])
