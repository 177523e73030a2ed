"""Cascade R-CNN ROI heads: a sequence of box heads, each refining the boxes of the previous
one and trained against ground truth matched at a higher IoU."""
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from detzoo.config import configurable
from detzoo.layers import ShapeSpec
from detzoo.structures import Boxes, ImageList, Instances, pairwise_iou
from detzoo.utils.events import get_event_storage

from ..box_regression import Box2BoxTransform
from ..matcher import Matcher
from ..poolers import ROIPooler
from .box_head import build_box_head
from .fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference
from .roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads

__all__ = ["CascadeROIHeads"]


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `scale` backward."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output * ctx.scale, None


@ROI_HEADS_REGISTRY.register()
class CascadeROIHeads(StandardROIHeads):
    """Cascade R-CNN (Cai & Vasconcelos). `box_head` and `box_predictor` are ModuleLists with
    one entry per stage (state-dict keys `box_head.<k>.*`, `box_predictor.<k>.*`)."""

    @configurable
    def __init__(self, *, box_in_features: List[str], box_pooler: ROIPooler, box_heads: List[nn.Module],
                 box_predictors: List[nn.Module], proposal_matchers: List[Matcher], **kwargs):
        """
        Args:
            box_pooler: shared by all stages.
            box_heads, box_predictors: one per stage.
            proposal_matchers: one per stage; the first matches the RPN proposals, the others
                the previous stage's boxes.
        """
        if "proposal_matcher" in kwargs:
            raise TypeError("CascadeROIHeads takes proposal_matchers (one per stage), not proposal_matcher")
        num_stages = len(box_heads)
        if not (len(box_predictors) == len(proposal_matchers) == num_stages):
            raise ValueError(f"need one box predictor and one matcher per stage: {num_stages} heads, "
                             f"{len(box_predictors)} predictors, {len(proposal_matchers)} matchers")
        kwargs["proposal_matcher"] = proposal_matchers[0]
        super().__init__(box_in_features=box_in_features, box_pooler=box_pooler, box_head=nn.ModuleList(box_heads),
                         box_predictor=nn.ModuleList(box_predictors), **kwargs)
        self.num_cascade_stages = num_stages
        self.proposal_matchers = proposal_matchers

    @classmethod
    def from_config(cls, cfg, input_shape):
        args = super().from_config(cfg, input_shape)
        args.pop("proposal_matcher")
        return args

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        cascade = cfg.MODEL.ROI_BOX_CASCADE_HEAD
        if len(cascade.BBOX_REG_WEIGHTS) != len(cascade.IOUS):
            raise ValueError(f"MODEL.ROI_BOX_CASCADE_HEAD: {len(cascade.IOUS)} IOUS but "
                             f"{len(cascade.BBOX_REG_WEIGHTS)} BBOX_REG_WEIGHTS")
        if not cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG:
            raise ValueError("CascadeROIHeads needs MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG True")
        if cascade.IOUS[0] != cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0]:
            raise ValueError(f"the first cascade IoU {cascade.IOUS[0]} must equal MODEL.ROI_HEADS.IOU_THRESHOLDS[0] "
                             f"{cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0]}")
        channels = {input_shape[f].channels for f in in_features}
        if len(channels) != 1:
            raise ValueError(f"the box heads are shared across {in_features}, which need equal channels")
        resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        pooler = ROIPooler(output_size=resolution, scales=tuple(1.0 / input_shape[f].stride for f in in_features),
                           sampling_ratio=cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
                           pooler_type=cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE)
        pooled = ShapeSpec(channels=channels.pop(), width=resolution, height=resolution)
        heads, predictors, matchers = [], [], []
        for iou, weights in zip(cascade.IOUS, cascade.BBOX_REG_WEIGHTS):
            head = build_box_head(cfg, pooled)
            heads.append(head)
            predictors.append(FastRCNNOutputLayers(cfg, head.output_shape,
                                                   box2box_transform=Box2BoxTransform(weights=weights)))
            matchers.append(Matcher([iou], [0, 1], allow_low_quality_matches=False))
        return {"box_in_features": in_features, "box_pooler": pooler, "box_heads": heads,
                "box_predictors": predictors, "proposal_matchers": matchers}

    def forward(self, images: ImageList, features: Dict[str, torch.Tensor], proposals: List[Instances],
                targets: Optional[List[Instances]] = None):
        if self.training:
            if not targets:
                raise ValueError("ROI heads need ground-truth targets in training mode")
            proposals = self.label_and_sample_proposals(proposals, targets)
            losses = self._forward_box(features, proposals, targets)
            losses.update(self._forward_mask(features, proposals))
            losses.update(self._forward_keypoint(features, proposals))
            return proposals, losses
        instances = self._forward_box(features, proposals)
        return self.forward_with_given_boxes(features, instances), {}

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances],
                     targets: Optional[List[Instances]] = None):
        """Run the stages; losses of every stage (suffix `_stage<k>`) in training, detections
        with stage-averaged scores and last-stage boxes at inference."""
        box_features = [features[f] for f in self.box_in_features]
        image_sizes = [p.image_size for p in proposals]
        stage_outputs = []  # training: (predictor, predictions, proposals) of each stage
        stage_scores: List[List[torch.Tensor]] = []  # inference: class probabilities per stage
        boxes: List[torch.Tensor] = []
        score_thresh, nms_thresh, topk = 0.0, 0.0, 0
        for stage, (head, predictor) in enumerate(zip(self.box_head, self.box_predictor)):
            if stage > 0:
                proposals = self._create_proposals_from_boxes(boxes, image_sizes)
                if self.training:
                    proposals = self._match_and_label_boxes(proposals, stage, targets)
            pooled = self.box_pooler(box_features, [p.proposal_boxes for p in proposals])
            if self.training:
                # The features are shared by all stages: scaling their gradient by 1/stages
                # averages the stage losses there while each head keeps its full gradient.
                pooled = _ScaleGradient.apply(pooled, 1.0 / self.num_cascade_stages)
            predictions = predictor(head(pooled))
            boxes = list(predictor.predict_boxes(predictions, proposals))
            if self.training:
                stage_outputs.append((predictor, predictions, proposals))
            else:
                stage_scores.append(list(predictor.predict_probs(predictions, proposals)))
                score_thresh, nms_thresh = predictor.test_score_thresh, predictor.test_nms_thresh
                topk = predictor.test_topk_per_image

        if self.training:
            losses, storage = {}, get_event_storage()
            for stage, (predictor, predictions, stage_proposals) in enumerate(stage_outputs):
                with storage.name_scope(f"stage{stage}"):
                    stage_losses = predictor.losses(predictions, stage_proposals)
                losses.update({f"{k}_stage{stage}": v for k, v in stage_losses.items()})
            return losses

        scores = stage_scores[0]
        for later in stage_scores[1:]:
            scores = [total + probs for total, probs in zip(scores, later)]
        scores = [total * (1.0 / self.num_cascade_stages) for total in scores]
        return fast_rcnn_inference(boxes, scores, image_sizes, score_thresh, nms_thresh, topk)[0]

    @torch.no_grad()
    def _match_and_label_boxes(self, proposals, stage, targets):
        """Set gt_classes and gt_boxes of every proposal with this stage's matcher (no sampling)."""
        num_fg, num_bg = [], []
        for per_image, target in zip(proposals, targets):
            iou = pairwise_iou(target.gt_boxes, per_image.proposal_boxes)
            matched_idxs, labels = self.proposal_matchers[stage](iou)
            if len(target) > 0:
                classes = target.gt_classes[matched_idxs]
                classes[labels == 0] = self.num_classes
                gt_boxes = target.gt_boxes[matched_idxs]
            else:
                classes = torch.zeros_like(matched_idxs) + self.num_classes
                gt_boxes = Boxes(target.gt_boxes.tensor.new_zeros((len(per_image), 4)))
            per_image.gt_classes = classes
            per_image.gt_boxes = gt_boxes
            num_fg.append((labels == 1).sum().item())
            num_bg.append(labels.numel() - num_fg[-1])
        storage = get_event_storage()
        storage.put_scalar(f"stage{stage}/roi_head/num_fg_samples", sum(num_fg) / len(num_fg))
        storage.put_scalar(f"stage{stage}/roi_head/num_bg_samples", sum(num_bg) / len(num_bg))
        return proposals

    def _create_proposals_from_boxes(self, boxes: List[torch.Tensor],
                                     image_sizes: List[Tuple[int, int]]) -> List[Instances]:
        """Detached, clipped boxes as the next stage's proposals; empty ones are dropped in
        training only (at inference every stage must score the same regions)."""
        proposals: List[Instances] = []
        for tensor, size in zip(boxes, image_sizes):
            per_image = Boxes(tensor.detach())
            per_image.clip(size)
            if self.training:
                per_image = per_image[per_image.nonempty()]
            p = Instances(size)
            p.proposal_boxes = per_image
            proposals.append(p)
        return proposals
