"""Feature Pyramid Network (Lin et al. 2017) on top of a bottom-up backbone.

Each input level of stride 2^k gets a 1x1 lateral conv `fpn_lateral{k}` and a 3x3 output
conv `fpn_output{k}`; its output is named "p{k}". Going top-down, the running sum is
upsampled 2x (nearest) and added to the next lateral. A `top_block` may append coarser levels
(P6 by max-pool for Faster/Mask R-CNN, P6 and P7 by strided convs for RetinaNet).
"""
import copy
import math
from typing import Dict, List, Optional, Sequence

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from torch import nn

from detzoo.layers import Conv2d, ShapeSpec, get_norm

from .backbone import Backbone
from .build import BACKBONE_REGISTRY
from .resnet import build_resnet_backbone

__all__ = [
    "FPN",
    "LastLevelMaxPool",
    "LastLevelP6P7",
    "build_resnet_fpn_backbone",
    "build_retinanet_resnet_fpn_backbone",
]


class FPN(Backbone):
    """Pyramid features "p2", "p3", ... (all `out_channels` wide) built on a bottom-up backbone."""

    _fuse_type: torch.jit.Final[str]

    def __init__(
        self,
        bottom_up: Backbone,
        in_features: Sequence[str],
        out_channels: int,
        norm="",
        top_block: Optional[nn.Module] = None,
        fuse_type: str = "sum",
        square_pad: int = 0,
    ):
        """
        Args:
            bottom_up: the backbone whose outputs feed the pyramid.
            in_features: names of `bottom_up` outputs to use, from high to low resolution, with
                strides doubling from one to the next (e.g. ["res2", "res3", "res4", "res5"]).
            out_channels: channels of every pyramid level.
            norm: normalization after the lateral and output convs ("" for none; the convs then
                have a bias), a name or callable accepted by `get_norm`.
            top_block: optional module mapping one feature map to a list of coarser maps; it has
                `num_levels` (how many it adds) and `in_feature` (the name of its input: a
                `bottom_up` output such as "res5", or a pyramid level such as "p5").
            fuse_type: "sum" adds the upsampled and lateral features; "avg" averages them.
            square_pad: if > 0, inputs must be padded to squares of this side (see
                `padding_constraints`).
        """
        super().__init__()
        if not isinstance(bottom_up, Backbone):
            raise TypeError(f"FPN: bottom_up must be a Backbone, got {type(bottom_up).__name__}")
        if not in_features:
            raise ValueError("FPN: in_features is empty")
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"FPN: fuse_type must be 'sum' or 'avg', got {fuse_type!r}")
        input_shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in input_shapes]
        if missing:
            raise ValueError(
                f"FPN: in_features {missing} are not outputs of the bottom-up backbone "
                f"(it has {list(input_shapes)})"
            )
        strides = [input_shapes[f].stride for f in in_features]
        _check_strides_double(in_features, strides)

        use_bias = norm == ""
        lateral_convs, output_convs = [], []
        for feature, stride in zip(in_features, strides):
            lateral_conv = Conv2d(
                input_shapes[feature].channels,
                out_channels,
                kernel_size=1,
                bias=use_bias,
                norm=get_norm(norm, out_channels),
            )
            output_conv = Conv2d(
                out_channels,
                out_channels,
                kernel_size=3,
                stride=1,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, out_channels),
            )
            weight_init.c2_xavier_fill(lateral_conv)
            weight_init.c2_xavier_fill(output_conv)
            level = int(math.log2(stride))
            self.add_module(f"fpn_lateral{level}", lateral_conv)
            self.add_module(f"fpn_output{level}", output_conv)
            lateral_convs.append(lateral_conv)
            output_convs.append(output_conv)
        # Kept coarsest first, the order of the top-down pass (registered above by level).
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]
        self.top_block = top_block
        self.in_features = tuple(in_features)
        self.bottom_up = bottom_up

        self._out_feature_strides = {f"p{int(math.log2(s))}": s for s in strides}
        if top_block is not None:
            _check_top_block_input(top_block, list(input_shapes), list(self._out_feature_strides))
            last_level = int(math.log2(strides[-1]))
            for level in range(last_level + 1, last_level + 1 + top_block.num_levels):
                self._out_feature_strides[f"p{level}"] = 2**level
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {name: out_channels for name in self._out_features}
        self._size_divisibility = strides[-1]
        self._square_pad = square_pad
        self._fuse_type = fuse_type

    @property
    def size_divisibility(self) -> int:
        """The coarsest input stride: each level must be exactly twice the next one."""
        return self._size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"square_size": self._square_pad}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: images (N, C, H, W), H and W multiples of `size_divisibility`.

        Returns:
            "p{k}" -> (N, out_channels, H / 2^k, W / 2^k), from fine to coarse.
        """
        bottom_up_features = self.bottom_up(x)
        top_down = self.lateral_convs[0](bottom_up_features[self.in_features[-1]])
        results = [self.output_convs[0](top_down)]
        # Level by level towards the finest. All pairs are visited, the coarsest skipped:
        # TorchScript can neither slice a ModuleList nor `continue` in a loop over one.
        for index, (lateral_conv, output_conv) in enumerate(zip(self.lateral_convs, self.output_convs)):
            if index > 0:
                upsampled = F.interpolate(top_down, scale_factor=2.0, mode="nearest")
                top_down = lateral_conv(bottom_up_features[self.in_features[-1 - index]]) + upsampled
                if self._fuse_type == "avg":
                    top_down = top_down / 2
                results.insert(0, output_conv(top_down))
        if self.top_block is not None:
            results.extend(self.top_block(self._top_block_input(bottom_up_features, results)))
        return {name: result for name, result in zip(self._out_features, results)}

    def __prepare_scriptable__(self) -> "FPN":
        """A copy for `torch.jit.script`, which cannot index the plain lists of convs: there
        they are nn.ModuleLists (the copy's state-dict keys become `lateral_convs.*` and
        `output_convs.*`; this model's are unchanged)."""
        scriptable = copy.deepcopy(self)
        scriptable.lateral_convs = nn.ModuleList(scriptable.lateral_convs)
        scriptable.output_convs = nn.ModuleList(scriptable.output_convs)
        for name, _ in self.named_children():
            if name.startswith("fpn_"):
                delattr(scriptable, name)
        return scriptable

    def _top_block_input(self, bottom_up_features: Dict[str, torch.Tensor],
                         results: List[torch.Tensor]) -> torch.Tensor:
        name = self.top_block.in_feature
        if name in bottom_up_features:
            return bottom_up_features[name]
        return results[self._out_features.index(name)]

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """"p{k}" -> `ShapeSpec(channels=out_channels, stride=2^k)`."""
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }


def _check_strides_double(in_features: Sequence[str], strides: Sequence[int]) -> None:
    """The top-down pass upsamples by 2, so each input must have twice the stride of the last."""
    for i in range(1, len(strides)):
        if strides[i] != 2 * strides[i - 1]:
            raise ValueError(
                f"FPN: in_features {list(in_features)} have strides {list(strides)}; each stride "
                f"must be twice the previous one"
            )


def _check_top_block_input(top_block: nn.Module, bottom_up_names, level_names) -> None:
    name = getattr(top_block, "in_feature", None)
    if name not in bottom_up_names and name not in level_names:
        raise ValueError(
            f"FPN: top_block reads in_feature {name!r}, which is neither a bottom-up output "
            f"{bottom_up_names} nor a pyramid level {level_names}"
        )


class LastLevelMaxPool(nn.Module):
    """P6 from P5 by subsampling (max-pool, kernel 1, stride 2), as in the FPN paper."""

    def __init__(self):
        super().__init__()
        self.num_levels = 1
        self.in_feature = "p5"

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """x: P5 (N, C, H, W) -> [P6 (N, C, ceil(H / 2), ceil(W / 2))]."""
        return [F.max_pool2d(x, kernel_size=1, stride=2, padding=0)]


class LastLevelP6P7(nn.Module):
    """RetinaNet's extra levels: P6 = conv3x3/2(input), P7 = conv3x3/2(relu(P6))."""

    def __init__(self, in_channels: int, out_channels: int, in_feature: str = "res5"):
        """
        Args:
            in_channels: channels of the input feature.
            out_channels: channels of P6 and P7.
            in_feature: the input's name; "res5" (C5, RetinaNet) or "p5" (P5, as FCOS does).
        """
        super().__init__()
        self.num_levels = 2
        self.in_feature = in_feature
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for conv in (self.p6, self.p7):
            weight_init.c2_xavier_fill(conv)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """x: (N, in_channels, H, W) -> [P6 (N, C, H / 2, W / 2), P7 (N, C, H / 4, W / 4)] (ceil)."""
        p6 = self.p6(x)
        p7 = self.p7(F.relu(p6))
        return [p6, p7]


@BACKBONE_REGISTRY.register()
def build_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet (cfg.MODEL.RESNETS) + FPN (cfg.MODEL.FPN) + P6 by max-pool: Faster/Mask R-CNN."""
    bottom_up = build_resnet_backbone(cfg, input_shape)
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN + P6/P7 computed from C5 ("res5"): RetinaNet."""
    bottom_up = build_resnet_backbone(cfg, input_shape)
    bottom_up_shapes = bottom_up.output_shape()
    if "res5" not in bottom_up_shapes:
        raise ValueError(
            f"build_retinanet_resnet_fpn_backbone computes P6 from res5, which "
            f"MODEL.RESNETS.OUT_FEATURES {list(cfg.MODEL.RESNETS.OUT_FEATURES)} does not include"
        )
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(bottom_up_shapes["res5"].channels, out_channels),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
