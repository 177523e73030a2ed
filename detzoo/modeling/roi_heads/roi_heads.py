"""ROI heads: per-region computation of an R-CNN. In training they match proposals to ground
truth and sample them; then they pool region features and run the box (and mask / keypoint)
heads.

Shapes: N images; proposals and ground truth are lists of N Instances.
"""
import inspect
import logging
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from detzoo.config import configurable
from detzoo.layers import ShapeSpec, nonzero_tuple
from detzoo.structures import Boxes, ImageList, Instances, pairwise_iou
from detzoo.utils.events import get_event_storage
from detzoo.utils.registry import Registry

from ..backbone.resnet import BottleneckBlock, ResNet
from ..matcher import Matcher
from ..poolers import ROIPooler
from ..proposal_generator.proposal_utils import add_ground_truth_to_proposals
from ..sampling import subsample_labels
from .box_head import build_box_head
from .fast_rcnn import FastRCNNOutputLayers
from .keypoint_head import build_keypoint_head
from .mask_head import build_mask_head

logger = logging.getLogger(__name__)

ROI_HEADS_REGISTRY = Registry("ROI_HEADS")
ROI_HEADS_REGISTRY.__doc__ = """
ROI heads take (images, features, proposals, targets) and return (instances, losses).
Registered classes are built as `cls(cfg, input_shape: dict[str, ShapeSpec])`.
"""


def build_roi_heads(cfg, input_shape):
    """The ROI heads named by cfg.MODEL.ROI_HEADS.NAME."""
    return ROI_HEADS_REGISTRY.get(cfg.MODEL.ROI_HEADS.NAME)(cfg, input_shape)


def select_foreground_proposals(proposals: List[Instances], bg_label: int) -> Tuple[List[Instances], List[torch.Tensor]]:
    """
    Args:
        proposals: N Instances with `gt_classes`.
        bg_label: the background class index.
    Returns:
        list[Instances]: per image, the proposals whose gt class is neither ignored (-1) nor
            background.
        list[Tensor]: per image, the boolean selection mask.
    """
    if not proposals or not proposals[0].has("gt_classes"):
        raise ValueError("select_foreground_proposals needs a non-empty list of Instances with gt_classes")
    selected, masks = [], []
    for per_image in proposals:
        classes = per_image.gt_classes
        mask = (classes != -1) & (classes != bg_label)
        selected.append(per_image[mask.nonzero().squeeze(1)])
        masks.append(mask)
    return selected, masks


def select_proposals_with_visible_keypoints(proposals: List[Instances]) -> List[Instances]:
    """Keep the proposals that contain at least one visible ground-truth keypoint (images with
    no proposal are passed through)."""
    kept, counts = [], []
    for per_image in proposals:
        if len(per_image) == 0:
            kept.append(per_image)
            continue
        keypoints = per_image.gt_keypoints.tensor
        visible = keypoints[:, :, 2] >= 1
        x, y = keypoints[:, :, 0], keypoints[:, :, 1]
        box = per_image.proposal_boxes.tensor.unsqueeze(dim=1)
        inside = (x >= box[:, :, 0]) & (x <= box[:, :, 2]) & (y >= box[:, :, 1]) & (y <= box[:, :, 3])
        index = nonzero_tuple((inside & visible).any(dim=1))[0]
        counts.append(index.numel())
        kept.append(per_image[index])
    get_event_storage().put_scalar("keypoint_head/num_fg_samples", np.mean(counts) if counts else 0.0)
    return kept


class ROIHeads(nn.Module):
    """Base of the ROI heads: proposal-to-ground-truth matching and sampling for training.
    Subclasses implement `forward(images, features, proposals, targets=None)`."""

    @configurable
    def __init__(self, *, num_classes, batch_size_per_image, positive_fraction, proposal_matcher,
                 proposal_append_gt=True):
        """
        Args:
            num_classes: foreground classes K (background is K).
            batch_size_per_image: proposals sampled per image for training.
            positive_fraction: largest fraction of foreground among them.
            proposal_matcher: labels proposals by IoU with the ground truth.
            proposal_append_gt: add the ground-truth boxes to the proposals in training.
        """
        super().__init__()
        self.num_classes = num_classes
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.proposal_matcher = proposal_matcher
        self.proposal_append_gt = proposal_append_gt

    @classmethod
    def from_config(cls, cfg):
        heads = cfg.MODEL.ROI_HEADS
        return {
            "num_classes": heads.NUM_CLASSES,
            "batch_size_per_image": heads.BATCH_SIZE_PER_IMAGE,
            "positive_fraction": heads.POSITIVE_FRACTION,
            "proposal_append_gt": heads.PROPOSAL_APPEND_GT,
            "proposal_matcher": Matcher(heads.IOU_THRESHOLDS, heads.IOU_LABELS, allow_low_quality_matches=False),
        }

    def _sample_proposals(self, matched_idxs, matched_labels, gt_classes):
        """
        Args:
            matched_idxs (Tensor[P]): best ground truth of each proposal.
            matched_labels (Tensor[P]): the matcher's label of each proposal (1, 0, -1).
            gt_classes (Tensor[G]): class of each ground truth.
        Returns:
            Tensor: indices of the sampled proposals (foreground first).
            Tensor: their class labels in [0, K], K being background.
        """
        if gt_classes.numel() > 0:
            classes = gt_classes[matched_idxs]
            classes[matched_labels == 0] = self.num_classes
            classes[matched_labels == -1] = -1
        else:
            classes = torch.zeros_like(matched_idxs) + self.num_classes
        fg, bg = subsample_labels(classes, self.batch_size_per_image, self.positive_fraction, self.num_classes)
        sampled = torch.cat([fg, bg], dim=0)
        return sampled, classes[sampled]

    @torch.no_grad()
    def label_and_sample_proposals(self, proposals: List[Instances], targets: List[Instances]) -> List[Instances]:
        """Match proposals (plus the ground truth, if `proposal_append_gt`) to the ground truth
        and sample `batch_size_per_image` of them per image.

        Returns:
            N Instances: the sampled proposals with `gt_classes`, and, where the image has
            ground truth, every other `gt_*` field of their matched ground truth.
        """
        if self.proposal_append_gt:
            proposals = add_ground_truth_to_proposals([t.gt_boxes for t in targets], proposals)
        sampled_proposals, num_fg, num_bg = [], [], []
        for per_image, target in zip(proposals, targets):
            iou = pairwise_iou(target.gt_boxes, per_image.proposal_boxes)
            matched_idxs, matched_labels = self.proposal_matcher(iou)
            index, classes = self._sample_proposals(matched_idxs, matched_labels, target.gt_classes)
            per_image = per_image[index]
            per_image.gt_classes = classes
            if len(target) > 0:
                matched = matched_idxs[index]
                for name, value in target.get_fields().items():
                    if name.startswith("gt_") and not per_image.has(name):
                        per_image.set(name, value[matched])
            num_bg.append((classes == self.num_classes).sum().item())
            num_fg.append(classes.numel() - num_bg[-1])
            sampled_proposals.append(per_image)
        storage = get_event_storage()
        storage.put_scalar("roi_head/num_fg_samples", np.mean(num_fg))
        storage.put_scalar("roi_head/num_bg_samples", np.mean(num_bg))
        return sampled_proposals

    def forward(self, images: ImageList, features: Dict[str, torch.Tensor], proposals: List[Instances],
                targets: Optional[List[Instances]] = None):
        """
        Args:
            images: the batch (unused by most heads).
            features: backbone features by name, (N, C, Hi, Wi).
            proposals: N Instances with proposal_boxes and objectness_logits.
            targets: N Instances of ground truth (gt_boxes, gt_classes, gt_masks, gt_keypoints);
                training only.
        Returns:
            list[Instances]: detections at inference (may be [] in training).
            dict[str, Tensor]: losses in training.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")


def _check_training_targets(targets):
    if not targets:
        raise ValueError("ROI heads need ground-truth targets in training mode")


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeads(ROIHeads):
    """ROI heads of "C4" models: box and mask heads share one pooled region feature computed by
    the res5 stage of the ResNet (ResNet paper, appendix A)."""

    mask_on: torch.jit.Final[bool]  # a constant for TorchScript

    @configurable
    def __init__(self, *, in_features: List[str], pooler: ROIPooler, res5: nn.Module, box_predictor: nn.Module,
                 mask_head: Optional[nn.Module] = None, **kwargs):
        """
        Args:
            in_features: the one backbone feature pooled from (e.g. ["res4"]).
            pooler: extracts region features.
            res5: the per-region network (a ResNet stage), shared by the box and mask heads.
            box_predictor: like FastRCNNOutputLayers, applied to the spatially averaged res5 output.
            mask_head: optional mask head on the res5 output.
        """
        super().__init__(**kwargs)
        self.in_features = in_features
        self.pooler = pooler
        self.res5 = nn.Sequential(*res5) if isinstance(res5, (list, tuple)) else res5
        self.box_predictor = box_predictor
        self.mask_on = mask_head is not None
        if self.mask_on:
            self.mask_head = mask_head

    @classmethod
    def from_config(cls, cfg, input_shape):
        args = super().from_config(cfg)
        in_features = args["in_features"] = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        if len(in_features) != 1:
            raise ValueError(f"Res5ROIHeads pools from exactly one feature, got MODEL.ROI_HEADS.IN_FEATURES={in_features}")
        if cfg.MODEL.KEYPOINT_ON:
            raise ValueError("Res5ROIHeads has no keypoint head; use StandardROIHeads for MODEL.KEYPOINT_ON")
        resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        args["pooler"] = ROIPooler(output_size=resolution, scales=(1.0 / input_shape[in_features[0]].stride,),
                                   sampling_ratio=cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
                                   pooler_type=cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE)
        if not inspect.ismethod(cls._build_res5_block):
            cls._build_res5_block = classmethod(cls._build_res5_block)
        args["res5"], out_channels = cls._build_res5_block(cfg)
        args["box_predictor"] = FastRCNNOutputLayers(cfg, ShapeSpec(channels=out_channels, height=1, width=1))
        if cfg.MODEL.MASK_ON:
            args["mask_head"] = build_mask_head(cfg, ShapeSpec(channels=out_channels, width=resolution,
                                                               height=resolution))
        return args

    @classmethod
    def _build_res5_block(cls, cfg):
        """The res5 stage (3 bottleneck blocks, first with stride 2) and its output channels."""
        resnets = cfg.MODEL.RESNETS
        factor = 2 ** 3  # res5 has 8x the channels of res2
        out_channels = resnets.RES2_OUT_CHANNELS * factor
        if resnets.DEFORM_ON_PER_STAGE[-1]:
            raise ValueError("deformable convolution in the res5 ROI head is not supported "
                             "(MODEL.RESNETS.DEFORM_ON_PER_STAGE[-1] must be False for C4 models)")
        blocks = ResNet.make_stage(
            BottleneckBlock, 3, stride_per_block=[2, 1, 1], in_channels=out_channels // 2,
            bottleneck_channels=resnets.NUM_GROUPS * resnets.WIDTH_PER_GROUP * factor,
            out_channels=out_channels, num_groups=resnets.NUM_GROUPS, norm=resnets.NORM,
            stride_in_1x1=resnets.STRIDE_IN_1X1,
        )
        return nn.Sequential(*blocks), out_channels

    def _shared_roi_transform(self, features: List[torch.Tensor], boxes: List[Boxes]):
        """Pooled regions through res5: (R, C, 7, 7) at the default resolution of 14."""
        return self.res5(self.pooler(features, boxes))

    def forward(self, images: ImageList, features: Dict[str, torch.Tensor], proposals: List[Instances],
                targets: Optional[List[Instances]] = None):
        if self.training:
            _check_training_targets(targets)
            proposals = self.label_and_sample_proposals(proposals, targets)
        box_features = self._shared_roi_transform([features[f] for f in self.in_features],
                                                  [p.proposal_boxes for p in proposals])
        predictions = self.box_predictor(box_features.mean(dim=[2, 3]))
        if not self.training:
            instances, _ = self.box_predictor.inference(predictions, proposals)
            return self.forward_with_given_boxes(features, instances), {}
        losses = self.box_predictor.losses(predictions, proposals)
        if self.mask_on:
            foreground, masks = select_foreground_proposals(proposals, self.num_classes)
            # The mask head reuses the res5 features of the foreground regions.
            losses.update(self.mask_head(box_features[torch.cat(masks, dim=0)], foreground))
        return [], losses

    def forward_with_given_boxes(self, features: Dict[str, torch.Tensor], instances: List[Instances]):
        """Add mask predictions to detections that have pred_boxes and pred_classes (inference)."""
        if self.training:
            raise RuntimeError("forward_with_given_boxes is for inference; call eval() first")
        if not self.mask_on:
            return instances
        x = self._shared_roi_transform([features[f] for f in self.in_features], [i.pred_boxes for i in instances])
        return self.mask_head(x, instances)


@ROI_HEADS_REGISTRY.register()
class StandardROIHeads(ROIHeads):
    """Each head (box, mask, keypoint) has its own pooler and network; used by FPN models."""

    # Constants for TorchScript, which then compiles only the heads that exist.
    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]

    @configurable
    def __init__(self, *, box_in_features: List[str], box_pooler: ROIPooler, box_head: nn.Module,
                 box_predictor: nn.Module, mask_in_features: Optional[List[str]] = None,
                 mask_pooler: Optional[ROIPooler] = None, mask_head: Optional[nn.Module] = None,
                 keypoint_in_features: Optional[List[str]] = None, keypoint_pooler: Optional[ROIPooler] = None,
                 keypoint_head: Optional[nn.Module] = None, train_on_pred_boxes: bool = False, **kwargs):
        """
        Args:
            box_in_features, box_pooler, box_head, box_predictor: the box branch.
            mask_in_features, mask_pooler, mask_head: the mask branch (None = no masks). With
                mask_pooler None the head receives the feature dict itself.
            keypoint_in_features, keypoint_pooler, keypoint_head: likewise for keypoints.
            train_on_pred_boxes: train the mask/keypoint heads on the box head's refined boxes
                instead of the proposals.
        """
        super().__init__(**kwargs)
        self.in_features = self.box_in_features = box_in_features
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.mask_on = mask_in_features is not None
        if self.mask_on:
            self.mask_in_features = mask_in_features
            self.mask_pooler = mask_pooler
            self.mask_head = mask_head
        self.keypoint_on = keypoint_in_features is not None
        if self.keypoint_on:
            self.keypoint_in_features = keypoint_in_features
            self.keypoint_pooler = keypoint_pooler
            self.keypoint_head = keypoint_head
        self.train_on_pred_boxes = train_on_pred_boxes

    @classmethod
    def from_config(cls, cfg, input_shape):
        args = super().from_config(cfg)
        args["train_on_pred_boxes"] = cfg.MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES
        # Subclasses may override the _init_*_head methods as plain methods (old style); only
        # classmethods are called here.
        for init in (cls._init_box_head, cls._init_mask_head, cls._init_keypoint_head):
            if inspect.ismethod(init):
                args.update(init(cfg, input_shape))
        return args

    @staticmethod
    def _pooler_for(cfg_head, in_features, input_shape):
        """(pooler or None, input shape of the head) for a head config with POOLER_* keys."""
        resolution, pooler_type = cfg_head.POOLER_RESOLUTION, cfg_head.POOLER_TYPE
        if not pooler_type:
            return None, {f: input_shape[f] for f in in_features}
        pooler = ROIPooler(output_size=resolution, scales=tuple(1.0 / input_shape[f].stride for f in in_features),
                           sampling_ratio=cfg_head.POOLER_SAMPLING_RATIO, pooler_type=pooler_type)
        channels = input_shape[in_features[0]].channels
        return pooler, ShapeSpec(channels=channels, height=resolution, width=resolution)

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        channels = {input_shape[f].channels for f in in_features}
        if len(channels) != 1:
            raise ValueError(f"the box head is shared across {in_features}, which need equal channels; got "
                             f"{[input_shape[f].channels for f in in_features]}")
        pooler, shape = cls._pooler_for(cfg.MODEL.ROI_BOX_HEAD, in_features, input_shape)
        box_head = build_box_head(cfg, shape)
        return {"box_in_features": in_features, "box_pooler": pooler, "box_head": box_head,
                "box_predictor": FastRCNNOutputLayers(cfg, box_head.output_shape)}

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        if not cfg.MODEL.MASK_ON:
            return {}
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        pooler, shape = cls._pooler_for(cfg.MODEL.ROI_MASK_HEAD, in_features, input_shape)
        return {"mask_in_features": in_features, "mask_pooler": pooler, "mask_head": build_mask_head(cfg, shape)}

    @classmethod
    def _init_keypoint_head(cls, cfg, input_shape):
        if not cfg.MODEL.KEYPOINT_ON:
            return {}
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        pooler, shape = cls._pooler_for(cfg.MODEL.ROI_KEYPOINT_HEAD, in_features, input_shape)
        return {"keypoint_in_features": in_features, "keypoint_pooler": pooler,
                "keypoint_head": build_keypoint_head(cfg, shape)}

    def forward(self, images: ImageList, features: Dict[str, torch.Tensor], proposals: List[Instances],
                targets: Optional[List[Instances]] = None):
        if self.training:
            _check_training_targets(targets)
            proposals = self.label_and_sample_proposals(proposals, targets)
            losses = self._forward_box(features, proposals)
            # With train_on_pred_boxes, _forward_box replaced proposal_boxes by refined boxes.
            losses.update(self._forward_mask(features, proposals))
            losses.update(self._forward_keypoint(features, proposals))
            return proposals, losses
        instances = self._forward_box(features, proposals)
        # Masks and keypoints are predicted for the final detections only.
        return self.forward_with_given_boxes(features, instances), {}

    def forward_with_given_boxes(self, features: Dict[str, torch.Tensor], instances: List[Instances]):
        """Add mask / keypoint predictions to detections with pred_boxes and pred_classes."""
        if self.training:
            raise RuntimeError("forward_with_given_boxes is for inference; call eval() first")
        instances = self._forward_mask(features, instances)
        return self._forward_keypoint(features, instances)

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        """Losses in training (and refined proposal boxes if train_on_pred_boxes); detections
        at inference."""
        box_features = self.box_pooler([features[f] for f in self.box_in_features],
                                       [p.proposal_boxes for p in proposals])
        predictions = self.box_predictor(self.box_head(box_features))
        del box_features
        if not self.training:
            return self.box_predictor.inference(predictions, proposals)[0]
        losses = self.box_predictor.losses(predictions, proposals)
        if self.train_on_pred_boxes:
            with torch.no_grad():
                refined = self.box_predictor.predict_boxes_for_gt_classes(predictions, proposals)
                for per_image, boxes in zip(proposals, refined):
                    per_image.proposal_boxes = Boxes(boxes)
        return losses

    def _boxes_to_pool(self, instances: List[Instances]) -> List[Boxes]:
        """The regions the mask / keypoint heads look at: proposals in training, detections
        at inference."""
        return [i.proposal_boxes if self.training else i.pred_boxes for i in instances]

    # The heads take the pooled regions, or the features themselves when they have no pooler.
    # The branches are written out, not shared: TorchScript cannot pass a module (the pooler)
    # to a function.

    def _forward_mask(self, features: Dict[str, torch.Tensor], instances: List[Instances]):
        if not self.mask_on:
            return {} if self.training else instances
        if self.training:
            instances, _ = select_foreground_proposals(instances, self.num_classes)
        if self.mask_pooler is None:
            return self.mask_head({f: features[f] for f in self.mask_in_features}, instances)
        pooled = self.mask_pooler([features[f] for f in self.mask_in_features], self._boxes_to_pool(instances))
        return self.mask_head(pooled, instances)

    def _forward_keypoint(self, features: Dict[str, torch.Tensor], instances: List[Instances]):
        if not self.keypoint_on:
            return {} if self.training else instances
        if self.training:
            instances, _ = select_foreground_proposals(instances, self.num_classes)
            instances = select_proposals_with_visible_keypoints(instances)
        if self.keypoint_pooler is None:
            return self.keypoint_head({f: features[f] for f in self.keypoint_in_features}, instances)
        pooled = self.keypoint_pooler([features[f] for f in self.keypoint_in_features],
                                      self._boxes_to_pool(instances))
        return self.keypoint_head(pooled, instances)
