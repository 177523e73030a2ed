"""RetinaNet (Lin et al., focal loss): a dense detector with per-anchor sigmoid classification.

Shapes: N images, R anchors over all levels, K classes (K = background label), A anchors per
position.
"""
import logging
import math
from typing import List, Tuple

import torch
from fvcore.nn import sigmoid_focal_loss
from torch import Tensor, nn
from torch.nn import functional as F

from detzoo.config import configurable
from detzoo.layers import ShapeSpec, batched_nms, cat, get_norm
from detzoo.structures import Boxes, ImageList, Instances, pairwise_iou
from detzoo.utils.events import get_event_storage

from ..anchor_generator import build_anchor_generator
from ..backbone import Backbone, build_backbone
from ..box_regression import Box2BoxTransform, _dense_box_regression_loss
from ..matcher import Matcher
from .build import META_ARCH_REGISTRY
from .dense_detector import DenseDetector, permute_to_N_HWA_K

__all__ = ["RetinaNet", "RetinaNetHead", "permute_to_N_HWA_K"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class RetinaNet(DenseDetector):
    """RetinaNet: FPN backbone, a shared classification subnet and box subnet on every level."""

    @configurable
    def __init__(self, *, backbone: Backbone, head: nn.Module, head_in_features, anchor_generator,
                 box2box_transform, anchor_matcher, num_classes, focal_loss_alpha=0.25, focal_loss_gamma=2.0,
                 smooth_l1_beta=0.0, box_reg_loss_type="smooth_l1", test_score_thresh=0.05,
                 test_topk_candidates=1000, test_nms_thresh=0.5, max_detections_per_image=100,
                 pixel_mean, pixel_std, vis_period=0, input_format="BGR"):
        """
        Args:
            backbone, head, head_in_features: see DenseDetector; head is e.g. RetinaNetHead.
            anchor_generator: anchors of every level.
            box2box_transform: anchor -> box parameterization.
            anchor_matcher: labels anchors (with low-quality matches allowed).
            num_classes: K.
            focal_loss_alpha, focal_loss_gamma: focal loss parameters.
            smooth_l1_beta, box_reg_loss_type: box loss ("smooth_l1", "giou", "diou", "ciou").
            test_score_thresh: candidates need a probability above this.
            test_topk_candidates: best candidates kept per level before NMS.
            test_nms_thresh: per-class NMS threshold.
            max_detections_per_image: detections kept per image.
            vis_period, input_format: training visualization.
        """
        super().__init__(backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std)
        self.num_classes = num_classes
        self.anchor_generator = anchor_generator
        self.box2box_transform = box2box_transform
        self.anchor_matcher = anchor_matcher
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.smooth_l1_beta = smooth_l1_beta
        self.box_reg_loss_type = box_reg_loss_type
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.vis_period = vis_period
        self.input_format = input_format

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        retina = cfg.MODEL.RETINANET
        missing = [f for f in retina.IN_FEATURES if f not in shapes]
        if missing:
            raise ValueError(f"MODEL.RETINANET.IN_FEATURES names {missing}, which the backbone does not produce "
                             f"(it has {sorted(shapes)})")
        feature_shapes = [shapes[f] for f in retina.IN_FEATURES]
        return {
            "backbone": backbone,
            "head": RetinaNetHead(cfg, feature_shapes),
            "anchor_generator": build_anchor_generator(cfg, feature_shapes),
            "box2box_transform": Box2BoxTransform(weights=retina.BBOX_REG_WEIGHTS),
            "anchor_matcher": Matcher(retina.IOU_THRESHOLDS, retina.IOU_LABELS, allow_low_quality_matches=True),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "num_classes": retina.NUM_CLASSES,
            "head_in_features": retina.IN_FEATURES,
            "focal_loss_alpha": retina.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": retina.FOCAL_LOSS_GAMMA,
            "smooth_l1_beta": retina.SMOOTH_L1_LOSS_BETA,
            "box_reg_loss_type": retina.BBOX_REG_LOSS_TYPE,
            "test_score_thresh": retina.SCORE_THRESH_TEST,
            "test_topk_candidates": retina.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": retina.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "vis_period": cfg.VIS_PERIOD,
            "input_format": cfg.INPUT.FORMAT,
        }

    def forward_training(self, images, features, predictions, gt_instances):
        logits, deltas = self._transpose_dense_predictions(predictions, [self.num_classes, 4])
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, logits, gt_labels, deltas, gt_boxes)

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        """
        Args:
            anchors: L Boxes.
            pred_logits: L tensors (N, Hi*Wi*A, K); pred_anchor_deltas: L tensors (N, Hi*Wi*A, 4).
            gt_labels: N tensors (R,) in {-1 ignore, 0..K-1 class, K background}.
            gt_boxes: N tensors (R, 4).
        Returns:
            {"loss_cls", "loss_box_reg"}: focal loss and box loss, both divided by an EMA of the
            number of foreground anchors.
        """
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)
        valid = gt_labels >= 0
        positive = valid & (gt_labels != self.num_classes)
        num_positive = positive.sum().item()
        get_event_storage().put_scalar("num_pos_anchors", num_positive / num_images)
        normalizer = self._ema_update("loss_normalizer", max(num_positive, 1), 100)

        # One-hot over K+1 classes, background column dropped: background is all zeros.
        targets = F.one_hot(gt_labels[valid], num_classes=self.num_classes + 1)[:, :-1]
        loss_cls = sigmoid_focal_loss(cat(pred_logits, dim=1)[valid], targets.to(pred_logits[0].dtype),
                                      alpha=self.focal_loss_alpha, gamma=self.focal_loss_gamma, reduction="sum")
        loss_box_reg = _dense_box_regression_loss(anchors, self.box2box_transform, pred_anchor_deltas, gt_boxes,
                                                  positive, box_reg_loss_type=self.box_reg_loss_type,
                                                  smooth_l1_beta=self.smooth_l1_beta)
        return {"loss_cls": loss_cls / normalizer, "loss_box_reg": loss_box_reg / normalizer}

    @torch.no_grad()
    def label_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]):
        """
        Returns:
            list[Tensor]: N label vectors (R,): -1 ignored, class index, or K for background.
            list[Tensor]: N tensors (R, 4), the matched ground-truth boxes.
        """
        anchors = Boxes.cat(anchors)
        labels, matched_boxes = [], []
        for gt in gt_instances:
            matched_idxs, anchor_labels = self.anchor_matcher(pairwise_iou(gt.gt_boxes, anchors))
            if len(gt) > 0:
                boxes = gt.gt_boxes.tensor[matched_idxs]
                classes = gt.gt_classes[matched_idxs]
                classes[anchor_labels == 0] = self.num_classes
                classes[anchor_labels == -1] = -1
            else:
                boxes = torch.zeros_like(anchors.tensor)
                classes = torch.zeros_like(matched_idxs) + self.num_classes
            labels.append(classes)
            matched_boxes.append(boxes)
        return labels, matched_boxes

    def forward_inference(self, images: ImageList, features: List[Tensor], predictions: List[List[Tensor]]):
        logits, deltas = self._transpose_dense_predictions(predictions, [self.num_classes, 4])
        anchors = self.anchor_generator(features)
        results: List[Instances] = []
        for i, image_size in enumerate(images.image_sizes):
            scores = [x[i].sigmoid() for x in logits]
            results.append(self.inference_single_image(anchors, scores, [x[i] for x in deltas], image_size))
        return results

    def inference_single_image(self, anchors: List[Boxes], box_cls: List[Tensor], box_delta: List[Tensor],
                               image_size: Tuple[int, int]):
        """Decode every level's candidates, then per-class NMS and the top detections.

        Args:
            anchors: L Boxes; box_cls: L tensors (Hi*Wi*A, K) probabilities; box_delta: L (Hi*Wi*A, 4).
        """
        detections = self._decode_multi_level_predictions(anchors, box_cls, box_delta, self.test_score_thresh,
                                                          self.test_topk_candidates, image_size)
        keep = batched_nms(detections.pred_boxes.tensor, detections.scores, detections.pred_classes,
                           self.test_nms_thresh)
        return detections[keep[: self.max_detections_per_image]]


class RetinaNetHead(nn.Module):
    """Two subnets of 3x3 convs + ReLU (`cls_subnet`, `bbox_subnet`, shared across levels),
    then `cls_score` (A*K) and `bbox_pred` (A*4) 3x3 convs."""

    @configurable
    def __init__(self, *, input_shape: List[ShapeSpec], num_classes, num_anchors, conv_dims: List[int], norm="",
                 prior_prob=0.01):
        """
        Args:
            input_shape: the levels' shapes (channels must agree).
            num_classes: K.
            num_anchors: A.
            conv_dims: channels of each subnet conv.
            norm: normalization after each subnet conv ("" for none; BN-like norms shared
                across levels train poorly).
            prior_prob: initial foreground probability of every anchor (sets the cls bias).
        """
        super().__init__()
        if norm in ("BN", "SyncBN"):
            logger.warning("RetinaNetHead: a BatchNorm shared across FPN levels trains poorly")
        self.cls_subnet = self._subnet(input_shape[0].channels, conv_dims, norm)
        self.bbox_subnet = self._subnet(input_shape[0].channels, conv_dims, norm)
        self.cls_score = nn.Conv2d(conv_dims[-1], num_anchors * num_classes, kernel_size=3, stride=1, padding=1)
        self.bbox_pred = nn.Conv2d(conv_dims[-1], num_anchors * 4, kernel_size=3, stride=1, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0, std=0.01)
                nn.init.constant_(module.bias, 0)
        nn.init.constant_(self.cls_score.bias, -math.log((1 - prior_prob) / prior_prob))

    @staticmethod
    def _subnet(in_channels, conv_dims, norm):
        layers = []
        for c_in, c_out in zip([in_channels] + list(conv_dims), conv_dims):
            layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=1))
            if norm:
                layers.append(get_norm(norm, c_out))
            layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        num_anchors = set(build_anchor_generator(cfg, input_shape).num_cell_anchors)
        if len(num_anchors) != 1:
            raise ValueError("RetinaNetHead needs the same number of anchors per position on every level")
        retina = cfg.MODEL.RETINANET
        return {"input_shape": input_shape, "num_classes": retina.NUM_CLASSES,
                "conv_dims": [input_shape[0].channels] * retina.NUM_CONVS, "prior_prob": retina.PRIOR_PROB,
                "norm": retina.NORM, "num_anchors": num_anchors.pop()}

    def forward(self, features: List[Tensor]):
        """
        Args:
            features: L tensors (N, C, Hi, Wi), high to low resolution.
        Returns:
            list[Tensor]: L class logits (N, A*K, Hi, Wi).
            list[Tensor]: L box deltas (N, A*4, Hi, Wi).
        """
        logits = [self.cls_score(self.cls_subnet(x)) for x in features]
        deltas = [self.bbox_pred(self.bbox_subnet(x)) for x in features]
        return logits, deltas
