"""ResNet, ResNeXt and deformable ResNet backbones in Detectron2's (MSRA / Caffe2) layout.

Module names give Detectron2's state-dict keys, so its checkpoints load unchanged:
`stem.conv1.weight`, `stem.conv1.norm.*`, `res{2..5}.{i}.shortcut.*` (first block of a stage
whose channel count changes), `res{k}.{i}.conv{1,2,3}.weight` with `.norm.*`, and in
deformable blocks `res{k}.{i}.conv2_offset.{weight,bias}`.

Spatial sizes: the stem divides H and W by 4 (7x7 stride-2 conv, 3x3 stride-2 max-pool);
res3, res4 and res5 each halve them again, except res5 when it is dilated (DC5 models).
"""
import copy
import logging
import math
from typing import Dict, List, Optional, Sequence

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from torch import nn

from detzoo.layers import (
    CNNBlockBase,
    Conv2d,
    DeformConv,
    ModulatedDeformConv,
    ShapeSpec,
    get_norm,
)

from .backbone import Backbone
from .build import BACKBONE_REGISTRY

__all__ = [
    "ResNetBlockBase",
    "BasicBlock",
    "BottleneckBlock",
    "DeformBottleneckBlock",
    "BasicStem",
    "ResNet",
    "make_stage",
    "build_resnet_backbone",
]

logger = logging.getLogger(__name__)

# Residual blocks per stage (res2..res5) for each standard depth.
_BLOCKS_PER_STAGE = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
_STAGE_INDEX = {"res2": 2, "res3": 3, "res4": 4, "res5": 5}


def _projection_shortcut(in_channels: int, out_channels: int, stride: int, norm) -> Optional[Conv2d]:
    """The 1x1 conv + norm that matches the identity path to the block output, if needed."""
    if in_channels == out_channels:
        return None
    return Conv2d(
        in_channels,
        out_channels,
        kernel_size=1,
        stride=stride,
        bias=False,
        norm=get_norm(norm, out_channels),
    )


def _msra_init(*convs: Optional[nn.Module]) -> None:
    for conv in convs:
        if conv is not None:
            weight_init.c2_msra_fill(conv)


class _ResidualBlock(CNNBlockBase):
    """Adds the (possibly projected) input to a residual branch and applies ReLU.

    Subclasses set `self.shortcut`: a Conv2d, or None for the identity.
    """

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C_in, H, W) -> (N, C_out, H / stride, W / stride)."""
        out = self._residual(x)
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class BasicBlock(_ResidualBlock):
    """Two 3x3 convs with a residual connection: the block of ResNet-18 and ResNet-34."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, norm="BN"):
        """
        Args:
            in_channels, out_channels: channels of the block input and output.
            stride: stride of the first 3x3 conv (and of the projection shortcut).
            norm: normalization after every conv, a name or callable accepted by `get_norm`.
        """
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = _projection_shortcut(in_channels, out_channels, stride, norm)
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=3,
            stride=stride,
            padding=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        self.conv2 = Conv2d(
            out_channels,
            out_channels,
            kernel_size=3,
            stride=1,
            padding=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        _msra_init(self.conv1, self.conv2, self.shortcut)

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu_(self.conv1(x)))


def _bottleneck_strides(stride: int, stride_in_1x1: bool):
    """(stride of the first 1x1 conv, stride of the 3x3 conv).

    MSRA's original ResNets stride in the 1x1 conv (Detectron2's ImageNet-pretrained R50/R101
    weights need that); torchvision and Caffe2 ResNeXt stride in the 3x3 conv.
    """
    return (stride, 1) if stride_in_1x1 else (1, stride)


class BottleneckBlock(_ResidualBlock):
    """1x1 (reduce) -> 3x3 (grouped for ResNeXt, optionally dilated) -> 1x1 (expand) convs
    with a residual connection: the block of ResNet-50/101/152 and ResNeXt."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm="BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
    ):
        """
        Args:
            in_channels, out_channels: channels of the block input and output.
            bottleneck_channels: output channels of the 1x1 reduce conv and of the 3x3 conv.
            stride: the block's total stride.
            num_groups: groups of the 3x3 conv (ResNeXt cardinality).
            norm: normalization after every conv, a name or callable accepted by `get_norm`.
            stride_in_1x1: put the stride in the first 1x1 conv instead of the 3x3 conv.
            dilation: dilation of the 3x3 conv (its padding follows, keeping the size).
        """
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = _projection_shortcut(in_channels, out_channels, stride, norm)
        stride_1x1, stride_3x3 = _bottleneck_strides(stride, stride_in_1x1)
        self.conv1 = Conv2d(
            in_channels,
            bottleneck_channels,
            kernel_size=1,
            stride=stride_1x1,
            bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv2 = self._make_conv2(bottleneck_channels, stride_3x3, num_groups, dilation, norm)
        self.conv3 = Conv2d(
            bottleneck_channels,
            out_channels,
            kernel_size=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        # The last norm of each branch keeps weight 1, as in Detectron2: zero-initializing it
        # (Goyal et al. 2017) was found to hurt GN models trained from scratch.
        _msra_init(self.conv1, self.conv2, self.conv3, self.shortcut)

    def _make_conv2(self, channels: int, stride: int, num_groups: int, dilation: int, norm) -> nn.Module:
        """The 3x3 conv, `channels` in and out."""
        return Conv2d(channels, channels, kernel_size=3, stride=stride, padding=dilation, bias=False,
                      groups=num_groups, dilation=dilation, norm=get_norm(norm, channels))

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        return self.conv3(out)


class DeformBottleneckBlock(BottleneckBlock):
    """`BottleneckBlock` whose 3x3 conv is a deformable conv (v1), or a modulated deformable
    conv (v2) when `deform_modulated`; a plain 3x3 conv `conv2_offset` predicts the offsets
    (and masks) from the block's own features."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm="BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
        deform_modulated: bool = False,
        deform_num_groups: int = 1,
    ):
        """
        Args:
            deform_modulated: use modulated deformable conv (DCNv2), which also predicts a
                per-sample mask.
            deform_num_groups: number of offset groups of the deformable conv.
            Others: as in `BottleneckBlock`.
        """
        # Read by `_make_conv2` during BottleneckBlock's construction.
        self.deform_modulated = deform_modulated
        self._deform_num_groups = deform_num_groups
        super().__init__(in_channels, out_channels, bottleneck_channels=bottleneck_channels, stride=stride,
                         num_groups=num_groups, norm=norm, stride_in_1x1=stride_in_1x1, dilation=dilation)
        # Zero offsets (and masks of sigmoid(0) = 0.5) at the start: a regular grid.
        nn.init.zeros_(self.conv2_offset.weight)
        nn.init.zeros_(self.conv2_offset.bias)

    def _make_conv2(self, channels: int, stride: int, num_groups: int, dilation: int, norm) -> nn.Module:
        """The deformable 3x3 conv; registers its offset predictor `conv2_offset` first (Detectron2's
        parameter order)."""
        # Per offset group and 3x3 kernel tap: (dy, dx), plus a mask value when modulated.
        values_per_tap = 3 if self.deform_modulated else 2
        self.conv2_offset = Conv2d(channels, values_per_tap * 9 * self._deform_num_groups, kernel_size=3,
                                   stride=stride, padding=dilation, dilation=dilation)
        deform_conv_class = ModulatedDeformConv if self.deform_modulated else DeformConv
        return deform_conv_class(channels, channels, kernel_size=3, stride=stride, padding=dilation, bias=False,
                                 groups=num_groups, dilation=dilation, deformable_groups=self._deform_num_groups,
                                 norm=get_norm(norm, channels))

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        if self.deform_modulated:
            # Detectron2's channel layout: the first two thirds are the offsets, the last
            # third the mask logits.
            offset_a, offset_b, mask = torch.chunk(self.conv2_offset(out), 3, dim=1)
            out = self.conv2(out, torch.cat((offset_a, offset_b), dim=1), mask.sigmoid())
        else:
            out = self.conv2(out, self.conv2_offset(out))
        return self.conv3(F.relu_(out))


class BasicStem(CNNBlockBase):
    """The layers before the first residual stage: 7x7 stride-2 conv + norm + ReLU, then a
    3x3 stride-2 max-pool. Total stride 4."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm="BN"):
        """
        Args:
            in_channels: image channels.
            out_channels: channels of the stem output.
            norm: normalization after the conv, a name or callable accepted by `get_norm`.
        """
        super().__init__(in_channels, out_channels, 4)
        self.in_channels = in_channels
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=7,
            stride=2,
            padding=3,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        weight_init.c2_msra_fill(self.conv1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C_in, H, W) -> (N, C_out, ceil(H / 4), ceil(W / 4)) for H, W even."""
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class ResNet(Backbone):
    """A ResNet (He et al. 2016): a stem followed by stages of residual blocks named
    "res2", "res3", ..., optionally an average pool + linear classifier ("linear")."""

    def __init__(
        self,
        stem: CNNBlockBase,
        stages: Sequence[Sequence[CNNBlockBase]],
        num_classes: Optional[int] = None,
        out_features: Optional[Sequence[str]] = None,
        freeze_at: int = 0,
    ):
        """
        Args:
            stem: the module applied to the image; must have `stride` and `out_channels`.
            stages: blocks of each stage (usually 4), e.g. from `ResNet.make_stage`. Stages the
                requested `out_features` do not need are dropped, so no parameter is left
                without a gradient.
            num_classes: if given, add a global average pool and a linear classifier.
            out_features: names of the outputs `forward` returns, among "stem", "res2", ...,
                "linear". Default: the last layer only.
            freeze_at: stages to freeze at construction, see `freeze`.
        """
        super().__init__()
        self.stem = stem
        self.num_classes = num_classes
        stages = self._stages_needed(stages, out_features)

        stride = self.stem.stride
        self._out_feature_strides = {"stem": stride}
        self._out_feature_channels = {"stem": self.stem.out_channels}
        last_name, last_channels = "stem", self.stem.out_channels
        self.stage_names, self.stages = [], []
        for i, blocks in enumerate(stages):
            name = f"res{i + 2}"
            _check_stage(name, blocks)
            stage = nn.Sequential(*blocks)
            self.add_module(name, stage)
            self.stage_names.append(name)
            self.stages.append(stage)
            stride *= math.prod(block.stride for block in blocks)
            last_name, last_channels = name, blocks[-1].out_channels
            self._out_feature_strides[name] = int(stride)
            self._out_feature_channels[name] = last_channels
        self.stage_names = tuple(self.stage_names)

        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.linear = nn.Linear(last_channels, num_classes)
            # Goyal et al. 2017, sec. 5.1: the classifier starts from N(0, 0.01^2) weights.
            nn.init.normal_(self.linear.weight, std=0.01)
            last_name = "linear"
            # Not a feature map: class scores (N, num_classes), hence no stride.
            self._out_feature_channels["linear"] = num_classes
            self._out_feature_strides["linear"] = None

        self._out_features = list(out_features) if out_features is not None else [last_name]
        available = [name for name, _ in self.named_children()]
        for name in self._out_features:
            if name not in available:
                raise ValueError(
                    f"ResNet: out_features has {name!r}, available outputs are {available}"
                )
        self.freeze(freeze_at)

    @staticmethod
    def _stages_needed(stages, out_features):
        if out_features is None or "linear" in out_features:
            return list(stages)
        num_stages = max((_STAGE_INDEX.get(name, 1) - 1 for name in out_features), default=0)
        return list(stages)[:num_stages]

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: images (N, C, H, W).

        Returns:
            dict of the requested `out_features`: "stem"/"resK" -> (N, C_f, H_f, W_f),
            "linear" -> (N, num_classes).
        """
        if not torch.jit.is_scripting() and x.dim() != 4:
            raise ValueError(f"ResNet takes an input of shape (N, C, H, W), got {tuple(x.shape)}")
        outputs: Dict[str, torch.Tensor] = {}
        x = self.stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for name, stage in zip(self.stage_names, self.stages):
            x = stage(x)
            if name in self._out_features:
                outputs[name] = x
        if self.num_classes is not None:
            x = torch.flatten(self.avgpool(x), 1)
            x = self.linear(x)
            if "linear" in self._out_features:
                outputs["linear"] = x
        return outputs

    def __prepare_scriptable__(self) -> "ResNet":
        """A copy for `torch.jit.script`, which cannot iterate the plain list `self.stages`:
        there the stages are an nn.ModuleList (the copy's state-dict keys become `stages.*`;
        this model's are unchanged)."""
        scriptable = copy.deepcopy(self)
        scriptable.stages = nn.ModuleList(scriptable.stages)
        for name in self.stage_names:
            delattr(scriptable, name)
        return scriptable

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """Name -> `ShapeSpec(channels, stride)` of every output in `out_features`."""
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }

    def freeze(self, freeze_at: int = 0) -> "ResNet":
        """Freeze the first `freeze_at` stages (a stage: layers with the same output size).

        1 freezes the stem, 2 the stem and res2, and so on; frozen blocks stop requiring
        gradients and their BatchNorms become `FrozenBatchNorm2d`.

        Returns:
            this ResNet.
        """
        if freeze_at >= 1:
            self.stem.freeze()
        for index, stage in enumerate(self.stages, start=2):
            if freeze_at >= index:
                for block in stage.children():
                    block.freeze()
        return self

    @staticmethod
    def make_stage(
        block_class, num_blocks: int, first_stride=None, *, in_channels: int, out_channels: int, **kwargs
    ) -> List[CNNBlockBase]:
        """The blocks of one stage, all of class `block_class`.

        Args:
            block_class: a `CNNBlockBase` subclass; it may change the spatial size only
                through its `stride`.
            num_blocks: number of blocks.
            first_stride: deprecated; use `stride_per_block=[s, 1, 1, ...]`.
            in_channels: input channels of the first block (the others get `out_channels`).
            out_channels: output channels of every block.
            kwargs: passed to every block; an argument named `<arg>_per_block` is a list of
                `num_blocks` values, block i receiving `<arg>=value[i]`.

        Example:
            ResNet.make_stage(BottleneckBlock, 3, in_channels=64, out_channels=256,
                              bottleneck_channels=64, stride_per_block=[2, 1, 1])
        """
        if first_stride is not None:
            if "stride" in kwargs or "stride_per_block" in kwargs:
                raise ValueError("make_stage: give either first_stride or stride/stride_per_block")
            kwargs["stride_per_block"] = [first_stride] + [1] * (num_blocks - 1)
            logger.warning("ResNet.make_stage(first_stride=) is deprecated, use stride_per_block")
        per_block = _split_per_block_kwargs(num_blocks, kwargs)
        blocks = []
        for block_kwargs in per_block:
            blocks.append(block_class(in_channels=in_channels, out_channels=out_channels, **block_kwargs))
            in_channels = out_channels
        return blocks

    @staticmethod
    def make_default_stages(depth: int, block_class=None, **kwargs) -> List[List[CNNBlockBase]]:
        """The 4 stages of a standard ResNet of `depth` (18, 34, 50, 101 or 152).

        Args:
            depth: network depth; selects blocks per stage and channel widths.
            block_class: defaults to `BasicBlock` below depth 50, `BottleneckBlock` otherwise;
                for depth >= 50 it must accept `bottleneck_channels`.
            kwargs: passed to `make_stage` (no strides or channels: the depth fixes them).
        """
        num_blocks = _blocks_per_stage(depth)
        if block_class is None:
            block_class = BasicBlock if depth < 50 else BottleneckBlock
        if depth < 50:
            in_channels, out_channels = (64, 64, 128, 256), (64, 128, 256, 512)
        else:
            in_channels, out_channels = (64, 256, 512, 1024), (256, 512, 1024, 2048)
        stages = []
        for n, stride, c_in, c_out in zip(num_blocks, (1, 2, 2, 2), in_channels, out_channels):
            stage_kwargs = dict(kwargs)
            if depth >= 50:
                stage_kwargs["bottleneck_channels"] = c_out // 4
            stages.append(
                ResNet.make_stage(
                    block_class=block_class,
                    num_blocks=n,
                    stride_per_block=[stride] + [1] * (n - 1),
                    in_channels=c_in,
                    out_channels=c_out,
                    **stage_kwargs,
                )
            )
        return stages


def _check_stage(name: str, blocks) -> None:
    if len(blocks) == 0:
        raise ValueError(f"ResNet: stage {name} has no blocks")
    for block in blocks:
        if not isinstance(block, CNNBlockBase):
            raise TypeError(f"ResNet: stage {name} holds a {type(block).__name__}, expected CNNBlockBase")


def _split_per_block_kwargs(num_blocks: int, kwargs) -> List[dict]:
    """Turn make_stage's kwargs into one kwargs dict per block (see `ResNet.make_stage`)."""
    per_block = [{} for _ in range(num_blocks)]
    for key, value in kwargs.items():
        if not key.endswith("_per_block"):
            for block_kwargs in per_block:
                block_kwargs[key] = value
            continue
        name = key[: -len("_per_block")]
        if name in kwargs:
            raise ValueError(f"make_stage: got both {key} and {name}")
        if len(value) != num_blocks:
            raise ValueError(f"make_stage: {key} has {len(value)} values, expected num_blocks={num_blocks}")
        for block_kwargs, v in zip(per_block, value):
            block_kwargs[name] = v
    return per_block


def _blocks_per_stage(depth: int):
    if depth not in _BLOCKS_PER_STAGE:
        raise ValueError(f"ResNet depth must be one of {sorted(_BLOCKS_PER_STAGE)}, got {depth}")
    return _BLOCKS_PER_STAGE[depth]


ResNetBlockBase = CNNBlockBase
"""Former name of `CNNBlockBase`, kept for code written against old Detectron2."""


def make_stage(*args, **kwargs) -> List[CNNBlockBase]:
    """Deprecated alias of `ResNet.make_stage`."""
    return ResNet.make_stage(*args, **kwargs)


@BACKBONE_REGISTRY.register()
def build_resnet_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """A `ResNet` from `cfg.MODEL.RESNETS` and `cfg.MODEL.BACKBONE.FREEZE_AT`.

    Only the stages up to the last one named in `MODEL.RESNETS.OUT_FEATURES` are built (C4
    models stop at res4; their res5 lives in the ROI heads).
    """
    res = cfg.MODEL.RESNETS
    norm = res.NORM
    depth = res.DEPTH
    num_blocks = _blocks_per_stage(depth)
    out_features = list(res.OUT_FEATURES)
    _check_resnet_cfg(res, depth)

    stem = BasicStem(in_channels=input_shape.channels, out_channels=res.STEM_OUT_CHANNELS, norm=norm)
    num_stages = max((_STAGE_INDEX.get(name, 1) - 1 for name in out_features), default=0)
    in_channels = res.STEM_OUT_CHANNELS
    out_channels = res.RES2_OUT_CHANNELS
    bottleneck_channels = res.NUM_GROUPS * res.WIDTH_PER_GROUP
    stages = []
    for idx in range(num_stages):
        is_res5 = idx == 3
        # DC5: res5 keeps the res4 resolution and dilates its 3x3 convs instead (R-FCN convention).
        dilation = res.RES5_DILATION if is_res5 else 1
        first_stride = 1 if idx == 0 or dilation == 2 else 2
        stage_kwargs = {
            "num_blocks": num_blocks[idx],
            "stride_per_block": [first_stride] + [1] * (num_blocks[idx] - 1),
            "in_channels": in_channels,
            "out_channels": out_channels,
            "norm": norm,
        }
        if depth in (18, 34):
            stage_kwargs["block_class"] = BasicBlock
        else:
            stage_kwargs.update(
                bottleneck_channels=bottleneck_channels,
                stride_in_1x1=res.STRIDE_IN_1X1,
                dilation=dilation,
                num_groups=res.NUM_GROUPS,
            )
            if res.DEFORM_ON_PER_STAGE[idx]:
                stage_kwargs.update(
                    block_class=DeformBottleneckBlock,
                    deform_modulated=res.DEFORM_MODULATED,
                    deform_num_groups=res.DEFORM_NUM_GROUPS,
                )
            else:
                stage_kwargs["block_class"] = BottleneckBlock
        stages.append(ResNet.make_stage(**stage_kwargs))
        in_channels = out_channels
        out_channels *= 2
        bottleneck_channels *= 2
    return ResNet(stem, stages, out_features=out_features, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


def _check_resnet_cfg(res, depth: int) -> None:
    """Reject MODEL.RESNETS combinations the builder cannot honour, naming the key."""
    if res.RES5_DILATION not in (1, 2):
        raise ValueError(f"MODEL.RESNETS.RES5_DILATION must be 1 or 2, got {res.RES5_DILATION}")
    for name in res.OUT_FEATURES:
        if name != "stem" and name not in _STAGE_INDEX:
            raise ValueError(
                f"MODEL.RESNETS.OUT_FEATURES has {name!r}; expected names among "
                f"{['stem'] + list(_STAGE_INDEX)}"
            )
    if len(res.DEFORM_ON_PER_STAGE) != 4:
        raise ValueError(
            f"MODEL.RESNETS.DEFORM_ON_PER_STAGE needs 4 values (res2..res5), got {res.DEFORM_ON_PER_STAGE}"
        )
    if depth not in (18, 34):
        return
    # BasicBlock has no bottleneck, groups, dilation or deformable variant.
    # res2 of a BasicBlock ResNet keeps the stem's width: 64 in the standard R18/R34 (what
    # Detectron2 requires); a narrower stem and res2 (e.g. 32/32) make a cheaper network for CPUs.
    if res.RES2_OUT_CHANNELS != res.STEM_OUT_CHANNELS:
        raise ValueError(
            f"MODEL.RESNETS.RES2_OUT_CHANNELS must equal MODEL.RESNETS.STEM_OUT_CHANNELS for R{depth} "
            f"(64 in the standard network), got {res.RES2_OUT_CHANNELS} and {res.STEM_OUT_CHANNELS}"
        )
    if any(res.DEFORM_ON_PER_STAGE):
        raise ValueError(f"MODEL.RESNETS.DEFORM_ON_PER_STAGE must be all False for R{depth}")
    if res.RES5_DILATION != 1:
        raise ValueError(f"MODEL.RESNETS.RES5_DILATION must be 1 for R{depth}, got {res.RES5_DILATION}")
    if res.NUM_GROUPS != 1:
        raise ValueError(f"MODEL.RESNETS.NUM_GROUPS must be 1 for R{depth}, got {res.NUM_GROUPS}")
