"""Semantic segmentation: SemanticSegmentor (backbone + per-pixel head) and the FPN semantic
head of Panoptic FPN (Kirillov et al.)."""
from typing import Dict

import fvcore.nn.weight_init as weight_init
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from detzoo.config import configurable
from detzoo.layers import Conv2d, ShapeSpec, get_norm
from detzoo.structures import ImageList
from detzoo.utils.registry import Registry

from ..backbone import Backbone, build_backbone
from ..postprocessing import sem_seg_postprocess
from .build import META_ARCH_REGISTRY
from .rcnn import _ImageNormalizer, _check_inputs

__all__ = ["SemanticSegmentor", "SEM_SEG_HEADS_REGISTRY", "SemSegFPNHead", "build_sem_seg_head"]

SEM_SEG_HEADS_REGISTRY = Registry("SEM_SEG_HEADS")
SEM_SEG_HEADS_REGISTRY.__doc__ = """
Semantic heads map backbone features (and, in training, targets) to per-pixel class logits
and losses. Registered classes are built as `cls(cfg, input_shape: dict[str, ShapeSpec])`.
"""


def build_sem_seg_head(cfg, input_shape):
    """The semantic head named by cfg.MODEL.SEM_SEG_HEAD.NAME."""
    return SEM_SEG_HEADS_REGISTRY.get(cfg.MODEL.SEM_SEG_HEAD.NAME)(cfg, input_shape)


def _padded_targets(batched_inputs, device, size_divisibility, ignore_value, padding_constraints):
    """Stack the inputs' "sem_seg" (H, W) int64 maps, padded with `ignore_value`."""
    targets = [x["sem_seg"].to(device) for x in batched_inputs]
    return ImageList.from_tensors(targets, size_divisibility, ignore_value,
                                  padding_constraints=padding_constraints).tensor


@META_ARCH_REGISTRY.register()
class SemanticSegmentor(_ImageNormalizer):
    """A backbone and a semantic head. Inputs need "image" and, in training, "sem_seg"
    (Tensor[H, W] int64, ignore value where unlabeled); outputs are {"sem_seg": Tensor[C, H, W]}
    logits at the requested size."""

    @configurable
    def __init__(self, *, backbone: Backbone, sem_seg_head: nn.Module, pixel_mean, pixel_std):
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self._register_pixel_stats(pixel_mean, pixel_std)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        return {"backbone": backbone, "sem_seg_head": build_sem_seg_head(cfg, backbone.output_shape()),
                "pixel_mean": cfg.MODEL.PIXEL_MEAN, "pixel_std": cfg.MODEL.PIXEL_STD}

    def forward(self, batched_inputs):
        _check_inputs(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        targets = None
        if "sem_seg" in batched_inputs[0]:
            targets = _padded_targets(batched_inputs, self.device, self.backbone.size_divisibility,
                                      self.sem_seg_head.ignore_value, self.backbone.padding_constraints)
        elif self.training:
            raise ValueError("training a semantic segmentor needs 'sem_seg' in every input")
        results, losses = self.sem_seg_head(features, targets)
        if self.training:
            return losses
        processed = []
        for result, inputs, size in zip(results, batched_inputs, images.image_sizes):
            height, width = inputs.get("height", size[0]), inputs.get("width", size[1])
            processed.append({"sem_seg": sem_seg_postprocess(result, size, height, width)})
        return processed


@SEM_SEG_HEADS_REGISTRY.register()
class SemSegFPNHead(nn.Module):
    """Each FPN level goes through 3x3 convs with 2x upsampling until it reaches
    `common_stride`; the levels are summed and a 1x1 `predictor` gives class logits.
    Submodules are named after the input features (`p2`, `p3`, ...)."""

    @configurable
    def __init__(self, input_shape: Dict[str, ShapeSpec], *, num_classes: int, conv_dims: int, common_stride: int,
                 loss_weight: float = 1.0, norm=None, ignore_value: int = -1):
        """
        Args:
            input_shape: the features used, by name.
            num_classes: semantic classes (stuff + one "things" class in Panoptic FPN).
            conv_dims: channels of the head convs.
            common_stride: stride of the merged output (4 for P2).
            loss_weight: multiplies the loss.
            norm: normalization of the convs.
            ignore_value: target value excluded from the loss.
        """
        super().__init__()
        if not input_shape:
            raise ValueError("SemSegFPNHead needs at least one input feature")
        ordered = sorted(input_shape.items(), key=lambda item: item[1].stride)
        self.in_features = [name for name, _ in ordered]
        self.ignore_value = ignore_value
        self.common_stride = common_stride
        self.loss_weight = loss_weight
        self.scale_heads = []
        for name, shape in ordered:
            steps = max(1, int(np.log2(shape.stride) - np.log2(common_stride)))
            ops = []
            for k in range(steps):
                conv = Conv2d(shape.channels if k == 0 else conv_dims, conv_dims, kernel_size=3, stride=1, padding=1,
                              bias=not norm, norm=get_norm(norm, conv_dims), activation=F.relu)
                weight_init.c2_msra_fill(conv)
                ops.append(conv)
                if shape.stride != common_stride:
                    ops.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*ops))
            self.add_module(name, self.scale_heads[-1])
        self.predictor = Conv2d(conv_dims, num_classes, kernel_size=1, stride=1, padding=0)
        weight_init.c2_msra_fill(self.predictor)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        missing = [f for f in head.IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.IN_FEATURES names {missing}, which the backbone does not produce")
        return {"input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
                "ignore_value": head.IGNORE_VALUE, "num_classes": head.NUM_CLASSES, "conv_dims": head.CONVS_DIM,
                "common_stride": head.COMMON_STRIDE, "norm": head.NORM, "loss_weight": head.LOSS_WEIGHT}

    def forward(self, features, targets=None):
        """
        Args:
            features: backbone features by name.
            targets (Tensor[N, H, W] int64): training targets at input resolution.
        Returns:
            (None, {"loss_sem_seg"}) in training; (Tensor[N, C, H, W] logits, {}) otherwise.
        """
        x = self.layers(features)
        if self.training:
            return None, self.losses(x, targets)
        return F.interpolate(x, scale_factor=self.common_stride, mode="bilinear", align_corners=False), {}

    def layers(self, features):
        x = None
        for name, head in zip(self.in_features, self.scale_heads):
            y = head(features[name])
            x = y if x is None else x + y
        return self.predictor(x)

    def losses(self, predictions, targets):
        # float32 for the upsampled logits: half-precision cross-entropy is unstable.
        logits = F.interpolate(predictions.float(), scale_factor=self.common_stride, mode="bilinear",
                               align_corners=False)
        loss = F.cross_entropy(logits, targets, reduction="mean", ignore_index=self.ignore_value)
        return {"loss_sem_seg": loss * self.loss_weight}
