"""Mask heads (Mask R-CNN): per-region mask logits, their loss, and inference.

Shapes: R regions over the batch, K classes, M x M the mask resolution (28 by default).
"""
from typing import List

import fvcore.nn.weight_init as weight_init
import torch
from torch import nn
from torch.nn import functional as F

from detzoo.config import configurable
from detzoo.layers import Conv2d, ConvTranspose2d, ShapeSpec, cat, get_norm
from detzoo.structures import Instances
from detzoo.utils.events import get_event_storage
from detzoo.utils.registry import Registry

__all__ = ["BaseMaskRCNNHead", "MaskRCNNConvUpsampleHead", "build_mask_head", "mask_rcnn_loss",
           "mask_rcnn_inference", "ROI_MASK_HEAD_REGISTRY"]

ROI_MASK_HEAD_REGISTRY = Registry("ROI_MASK_HEAD")
ROI_MASK_HEAD_REGISTRY.__doc__ = """
Mask heads take pooled region features and the regions' Instances. Registered classes are
built as `cls(cfg, input_shape: ShapeSpec)`.
"""


def mask_rcnn_loss(pred_mask_logits: torch.Tensor, instances: List[Instances], vis_period: int = 0):
    """Mean binary cross-entropy between each region's predicted mask (of its gt class) and
    its ground-truth mask cropped to the region and resized to M x M.

    Args:
        pred_mask_logits (Tensor[R, K, M, M] or [R, 1, M, M]): class-specific or agnostic.
        instances: per image, the foreground regions with proposal_boxes, gt_classes, gt_masks.
        vis_period: log gt/predicted masks as an image every this many iterations (0 = never).
    """
    class_agnostic = pred_mask_logits.size(1) == 1
    num_masks, side = pred_mask_logits.size(0), pred_mask_logits.size(2)
    if pred_mask_logits.size(3) != side:
        raise ValueError(f"mask predictions must be square, got {tuple(pred_mask_logits.shape)}")
    gt_classes, gt_masks = [], []
    for per_image in instances:
        if len(per_image) == 0:
            continue
        if not class_agnostic:
            gt_classes.append(per_image.gt_classes.to(dtype=torch.int64))
        masks = per_image.gt_masks.crop_and_resize(per_image.proposal_boxes.tensor, side)
        gt_masks.append(masks.to(device=pred_mask_logits.device))
    if not gt_masks:
        return pred_mask_logits.sum() * 0
    gt_masks = cat(gt_masks, dim=0)
    if class_agnostic:
        pred_mask_logits = pred_mask_logits[:, 0]
    else:
        index = torch.arange(num_masks, device=pred_mask_logits.device)
        pred_mask_logits = pred_mask_logits[index, cat(gt_classes, dim=0)]
    gt_bool = gt_masks if gt_masks.dtype == torch.bool else gt_masks > 0.5
    gt_masks = gt_masks.to(dtype=torch.float32)

    wrong = (pred_mask_logits > 0.0) != gt_bool
    num_positive = gt_bool.sum().item()
    storage = get_event_storage()
    storage.put_scalar("mask_rcnn/accuracy", 1 - wrong.sum().item() / max(wrong.numel(), 1.0))
    storage.put_scalar("mask_rcnn/false_positive",
                       (wrong & ~gt_bool).sum().item() / max(gt_bool.numel() - num_positive, 1.0))
    storage.put_scalar("mask_rcnn/false_negative", (wrong & gt_bool).sum().item() / max(num_positive, 1.0))
    if vis_period > 0 and storage.iter % vis_period == 0:
        side_by_side = torch.cat([pred_mask_logits.sigmoid(), gt_masks], dim=2)
        storage.put_image("Left: mask prediction;   Right: mask GT",
                          torch.stack([torch.cat(list(side_by_side), dim=1)] * 3, dim=0))
    return F.binary_cross_entropy_with_logits(pred_mask_logits, gt_masks, reduction="mean")


def mask_rcnn_inference(pred_mask_logits: torch.Tensor, pred_instances: List[Instances]):
    """Set `pred_masks` (Tensor[Ri, 1, M, M], probabilities) on each image's detections: the
    mask of the predicted class (or the single agnostic mask)."""
    if pred_mask_logits.size(1) == 1:
        probs = pred_mask_logits.sigmoid()
    else:
        classes = cat([i.pred_classes for i in pred_instances])
        index = torch.arange(pred_mask_logits.shape[0], device=classes.device)
        probs = pred_mask_logits[index, classes][:, None].sigmoid()
    for per_image_probs, instances in zip(probs.split([len(i) for i in pred_instances], dim=0), pred_instances):
        instances.pred_masks = per_image_probs


class BaseMaskRCNNHead(nn.Module):
    """Loss in training, `pred_masks` at inference; subclasses define `layers(x)`."""

    @configurable
    def __init__(self, *, loss_weight: float = 1.0, vis_period: int = 0):
        super().__init__()
        self.vis_period = vis_period
        self.loss_weight = loss_weight

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {"vis_period": cfg.VIS_PERIOD}

    def forward(self, x, instances: List[Instances]):
        """
        Args:
            x (Tensor[R, C, H, W]): pooled features of the regions.
            instances: per image, the regions (training: foreground proposals; inference:
                detections, which get `pred_masks`).
        Returns:
            {"loss_mask": Tensor} in training, else `instances`.
        """
        x = self.layers(x)
        if self.training:
            return {"loss_mask": mask_rcnn_loss(x, instances, self.vis_period) * self.loss_weight}
        mask_rcnn_inference(x, instances)
        return instances

    def layers(self, x):
        raise NotImplementedError(f"{type(self).__name__} must define layers(x)")


@ROI_MASK_HEAD_REGISTRY.register()
class MaskRCNNConvUpsampleHead(BaseMaskRCNNHead, nn.Sequential):
    """3x3 convs `mask_fcn1..n`, a stride-2 transposed conv `deconv` (2x upsampling) + ReLU,
    then a 1x1 `predictor` with K (or 1) outputs."""

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, num_classes, conv_dims, conv_norm="", **kwargs):
        """
        Args:
            input_shape: pooled features.
            num_classes: K, or 1 for class-agnostic masks.
            conv_dims: channels of the convs; the last entry is the deconv's.
            conv_norm: normalization after each conv.
        """
        super().__init__(**kwargs)
        if len(conv_dims) < 1:
            raise ValueError("conv_dims must have at least one entry (the deconv's channels)")
        channels = input_shape.channels
        self.conv_norm_relus = []
        for k, dim in enumerate(conv_dims[:-1]):
            conv = Conv2d(channels, dim, kernel_size=3, stride=1, padding=1, bias=not conv_norm,
                          norm=get_norm(conv_norm, dim), activation=nn.ReLU())
            self.add_module(f"mask_fcn{k + 1}", conv)
            self.conv_norm_relus.append(conv)
            channels = dim
        self.deconv = ConvTranspose2d(channels, conv_dims[-1], kernel_size=2, stride=2, padding=0)
        self.add_module("deconv_relu", nn.ReLU())
        self.predictor = Conv2d(conv_dims[-1], num_classes, kernel_size=1, stride=1, padding=0)
        for layer in self.conv_norm_relus + [self.deconv]:
            weight_init.c2_msra_fill(layer)
        nn.init.normal_(self.predictor.weight, std=0.001)
        if self.predictor.bias is not None:
            nn.init.constant_(self.predictor.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape):
        args = super().from_config(cfg, input_shape)
        head = cfg.MODEL.ROI_MASK_HEAD
        args.update(
            conv_dims=[head.CONV_DIM] * (head.NUM_CONV + 1),
            conv_norm=head.NORM,
            input_shape=input_shape,
            num_classes=1 if head.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES,
        )
        return args

    def layers(self, x):
        for layer in self:
            x = layer(x)
        return x


def build_mask_head(cfg, input_shape):
    """The mask head named by cfg.MODEL.ROI_MASK_HEAD.NAME."""
    return ROI_MASK_HEAD_REGISTRY.get(cfg.MODEL.ROI_MASK_HEAD.NAME)(cfg, input_shape)
