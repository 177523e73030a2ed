"""Keypoint heads (Keypoint R-CNN): one heatmap per keypoint and region, the heatmap
cross-entropy loss, and inference to (x, y, score) keypoints.

Shapes: R regions, K keypoints (17 for COCO), S x S heatmap side (56 by default).
"""
from typing import List

import torch
from torch import nn
from torch.nn import functional as F

from detzoo.config import configurable
from detzoo.layers import Conv2d, ConvTranspose2d, ShapeSpec, cat, interpolate
from detzoo.structures import Instances, heatmaps_to_keypoints
from detzoo.utils.events import get_event_storage
from detzoo.utils.registry import Registry

__all__ = ["ROI_KEYPOINT_HEAD_REGISTRY", "build_keypoint_head", "BaseKeypointRCNNHead",
           "KRCNNConvDeconvUpsampleHead", "keypoint_rcnn_loss", "keypoint_rcnn_inference"]

ROI_KEYPOINT_HEAD_REGISTRY = Registry("ROI_KEYPOINT_HEAD")
ROI_KEYPOINT_HEAD_REGISTRY.__doc__ = """
Keypoint heads take pooled region features and the regions' Instances. Registered classes are
built as `cls(cfg, input_shape: ShapeSpec)`.
"""

# Batches with no visible keypoint contribute no loss; how many so far is logged.
_skipped_batches = 0


def build_keypoint_head(cfg, input_shape):
    """The keypoint head named by cfg.MODEL.ROI_KEYPOINT_HEAD.NAME."""
    return ROI_KEYPOINT_HEAD_REGISTRY.get(cfg.MODEL.ROI_KEYPOINT_HEAD.NAME)(cfg, input_shape)


def keypoint_rcnn_loss(pred_keypoint_logits: torch.Tensor, instances: List[Instances], normalizer):
    """Cross-entropy over the S*S heatmap positions of every visible ground-truth keypoint.

    Args:
        pred_keypoint_logits (Tensor[R, K, S, S]).
        instances: per image, foreground regions with proposal_boxes and gt_keypoints.
        normalizer (float or None): the summed loss is divided by it; None = the number of
            visible keypoints.
    """
    global _skipped_batches
    side = pred_keypoint_logits.shape[2]
    targets, valid = [], []
    for per_image in instances:
        if len(per_image) == 0:
            continue
        heatmaps, visible = per_image.gt_keypoints.to_heatmap(per_image.proposal_boxes.tensor, side)
        targets.append(heatmaps.view(-1))
        valid.append(visible.view(-1))
    if targets:
        targets = cat(targets, dim=0)
        valid = torch.nonzero(cat(valid, dim=0).to(dtype=torch.uint8)).squeeze(1)
    if not len(targets) or valid.numel() == 0:
        _skipped_batches += 1
        get_event_storage().put_scalar("kpts_num_skipped_batches", _skipped_batches, smoothing_hint=False)
        return pred_keypoint_logits.sum() * 0
    num_regions, num_keypoints, height, width = pred_keypoint_logits.shape
    logits = pred_keypoint_logits.view(num_regions * num_keypoints, height * width)
    loss = F.cross_entropy(logits[valid], targets[valid], reduction="sum")
    return loss / (valid.numel() if normalizer is None else normalizer)


def keypoint_rcnn_inference(pred_keypoint_logits: torch.Tensor, pred_instances: List[Instances]):
    """Set `pred_keypoints` (Tensor[Ri, K, 3]: x, y, score in image coordinates) and
    `pred_keypoint_heatmaps` (Tensor[Ri, K, S, S]) on each image's detections."""
    boxes = cat([i.pred_boxes.tensor for i in pred_instances], dim=0)
    logits = pred_keypoint_logits.detach()
    keypoints = heatmaps_to_keypoints(logits, boxes.detach())[:, :, [0, 1, 3]]
    counts = [len(i) for i in pred_instances]
    for kp, heatmap, instances in zip(keypoints.split(counts, dim=0), logits.split(counts, dim=0), pred_instances):
        instances.pred_keypoints = kp
        instances.pred_keypoint_heatmaps = heatmap


class BaseKeypointRCNNHead(nn.Module):
    """Loss in training, keypoints at inference; subclasses define `layers(x)`."""

    @configurable
    def __init__(self, *, num_keypoints, loss_weight=1.0, loss_normalizer=1.0):
        """
        Args:
            num_keypoints: K.
            loss_weight: multiplies the loss.
            loss_normalizer: "visible" to divide by the number of visible keypoints of the
                batch, or a number n: divide by n * number of images.
        """
        super().__init__()
        self.num_keypoints = num_keypoints
        self.loss_weight = loss_weight
        if not (loss_normalizer == "visible" or isinstance(loss_normalizer, (int, float))):
            raise ValueError(f"loss_normalizer must be 'visible' or a number, got {loss_normalizer!r}")
        self.loss_normalizer = loss_normalizer

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = cfg.MODEL.ROI_KEYPOINT_HEAD
        args = {"loss_weight": head.LOSS_WEIGHT, "num_keypoints": head.NUM_KEYPOINTS}
        if head.NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS:
            args["loss_normalizer"] = "visible"
        else:
            # Normalize by the expected number of keypoints in a batch, a constant.
            args["loss_normalizer"] = (head.NUM_KEYPOINTS * cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE
                                       * cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION)
        return args

    def forward(self, x, instances: List[Instances]):
        """
        Args:
            x (Tensor[R, C, H, W]): pooled features.
            instances: per image, the regions (training) or detections (inference).
        Returns:
            {"loss_keypoint": Tensor} in training, else `instances` with keypoints set.
        """
        x = self.layers(x)
        if self.training:
            normalizer = None if self.loss_normalizer == "visible" else len(instances) * self.loss_normalizer
            return {"loss_keypoint": keypoint_rcnn_loss(x, instances, normalizer=normalizer) * self.loss_weight}
        keypoint_rcnn_inference(x, instances)
        return instances

    def layers(self, x):
        raise NotImplementedError(f"{type(self).__name__} must define layers(x)")


@ROI_KEYPOINT_HEAD_REGISTRY.register()
class KRCNNConvDeconvUpsampleHead(BaseKeypointRCNNHead, nn.Sequential):
    """3x3 convs `conv_fcn1..n` with ReLU, a stride-2 transposed conv `score_lowres` to K
    heatmaps, then 2x bilinear upsampling (14x14 pooled -> 56x56 heatmaps)."""

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, num_keypoints, conv_dims, **kwargs):
        super().__init__(num_keypoints=num_keypoints, **kwargs)
        self.up_scale = 2.0
        channels = input_shape.channels
        for idx, dim in enumerate(conv_dims, 1):
            self.add_module(f"conv_fcn{idx}", Conv2d(channels, dim, 3, stride=1, padding=1))
            self.add_module(f"conv_fcn_relu{idx}", nn.ReLU())
            channels = dim
        kernel = 4
        self.score_lowres = ConvTranspose2d(channels, num_keypoints, kernel, stride=2, padding=kernel // 2 - 1)
        for name, param in self.named_parameters():
            if "bias" in name:
                nn.init.constant_(param, 0)
            elif "weight" in name:
                nn.init.kaiming_normal_(param, mode="fan_out", nonlinearity="relu")

    @classmethod
    def from_config(cls, cfg, input_shape):
        args = super().from_config(cfg, input_shape)
        args["input_shape"] = input_shape
        args["conv_dims"] = cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS
        return args

    def layers(self, x):
        for layer in self:
            x = layer(x)
        return interpolate(x, scale_factor=self.up_scale, mode="bilinear", align_corners=False)
