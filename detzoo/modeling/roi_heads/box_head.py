"""Box heads: turn pooled region features into a feature vector for the box predictor."""
from typing import List

import fvcore.nn.weight_init as weight_init
import numpy as np
import torch
from torch import nn

from detzoo.config import configurable
from detzoo.layers import Conv2d, ShapeSpec, get_norm
from detzoo.utils.registry import Registry

__all__ = ["FastRCNNConvFCHead", "build_box_head", "ROI_BOX_HEAD_REGISTRY"]

ROI_BOX_HEAD_REGISTRY = Registry("ROI_BOX_HEAD")
ROI_BOX_HEAD_REGISTRY.__doc__ = """
Box heads map pooled region features (R, C, H, W) to per-region features. Registered classes
are built as `cls(cfg, input_shape: ShapeSpec)`.
"""


@ROI_BOX_HEAD_REGISTRY.register()
class FastRCNNConvFCHead(nn.Sequential):
    """Optional 3x3 convs (`conv1`, `conv2`, ...) then fully-connected layers (`fc1`, `fc2`,
    ...), each followed by ReLU. The 2-FC head of FPN models is conv_dims=[], fc_dims=[1024, 1024]."""

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, conv_dims: List[int], fc_dims: List[int], conv_norm=""):
        """
        Args:
            input_shape: the pooled features (channels, height, width).
            conv_dims: output channels of each conv.
            fc_dims: output size of each fully-connected layer.
            conv_norm: normalization after each conv (see get_norm).
        """
        super().__init__()
        if len(conv_dims) + len(fc_dims) == 0:
            raise ValueError("FastRCNNConvFCHead needs at least one conv or fc layer")
        shape = (input_shape.channels, input_shape.height, input_shape.width)
        self.conv_norm_relus = []
        for k, dim in enumerate(conv_dims):
            conv = Conv2d(shape[0], dim, kernel_size=3, padding=1, bias=not conv_norm,
                          norm=get_norm(conv_norm, dim), activation=nn.ReLU())
            self.add_module(f"conv{k + 1}", conv)
            self.conv_norm_relus.append(conv)
            shape = (dim, shape[1], shape[2])
        self.fcs = []
        for k, dim in enumerate(fc_dims):
            if k == 0:
                self.add_module("flatten", nn.Flatten())
            fc = nn.Linear(int(np.prod(shape)), dim)
            self.add_module(f"fc{k + 1}", fc)
            self.add_module(f"fc_relu{k + 1}", nn.ReLU())
            self.fcs.append(fc)
            shape = (dim,)
        for layer in self.conv_norm_relus:
            weight_init.c2_msra_fill(layer)
        for layer in self.fcs:
            weight_init.c2_xavier_fill(layer)
        self._output_shape = shape

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = cfg.MODEL.ROI_BOX_HEAD
        return {"input_shape": input_shape, "conv_dims": [head.CONV_DIM] * head.NUM_CONV,
                "fc_dims": [head.FC_DIM] * head.NUM_FC, "conv_norm": head.NORM}

    def forward(self, x):
        """x (Tensor[R, C, H, W]) -> Tensor[R, fc_dim] (or [R, C', H, W] with convs only)."""
        for layer in self:
            x = layer(x)
        return x

    @property
    @torch.jit.unused
    def output_shape(self):
        """ShapeSpec of the output: channels only after fc layers, else channels, height, width."""
        if len(self._output_shape) == 1:
            return ShapeSpec(channels=self._output_shape[0])
        return ShapeSpec(channels=self._output_shape[0], height=self._output_shape[1], width=self._output_shape[2])


def build_box_head(cfg, input_shape):
    """The box head named by cfg.MODEL.ROI_BOX_HEAD.NAME."""
    return ROI_BOX_HEAD_REGISTRY.get(cfg.MODEL.ROI_BOX_HEAD.NAME)(cfg, input_shape)
