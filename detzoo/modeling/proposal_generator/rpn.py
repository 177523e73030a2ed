"""Region Proposal Network (Faster R-CNN): objectness and box deltas for every anchor.

Shapes: N images, L feature levels, A anchors per position, Hi x Wi the size of level i,
B = 4 box parameters. Per level the head predicts logits (N, A, Hi, Wi) and deltas
(N, A*B, Hi, Wi); they are flattened to (N, Hi*Wi*A) and (N, Hi*Wi*A, B) in the same order as
the anchors of that level.
"""
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from detzoo.config import configurable
from detzoo.layers import Conv2d, ShapeSpec, cat, giou_loss, smooth_l1_loss
from detzoo.structures import Boxes, ImageList, Instances, pairwise_iou
from detzoo.utils.events import get_event_storage
from detzoo.utils.registry import Registry

from ..anchor_generator import build_anchor_generator
from ..box_regression import Box2BoxTransform
from ..matcher import Matcher
from ..sampling import subsample_labels
from .build import PROPOSAL_GENERATOR_REGISTRY
from .proposal_utils import find_top_rpn_proposals

RPN_HEAD_REGISTRY = Registry("RPN_HEAD")
RPN_HEAD_REGISTRY.__doc__ = """
RPN heads map a list of feature maps to per-level objectness logits and anchor deltas.
Registered classes are built as `cls(cfg, input_shape: list[ShapeSpec])`.
"""


def build_rpn_head(cfg, input_shape):
    """The RPN head named by cfg.MODEL.RPN.HEAD_NAME."""
    return RPN_HEAD_REGISTRY.get(cfg.MODEL.RPN.HEAD_NAME)(cfg, input_shape)


@RPN_HEAD_REGISTRY.register()
class StandardRPNHead(nn.Module):
    """A shared 3x3 conv + ReLU, then two 1x1 convs: objectness logits and box deltas.

    Conv layers between the 3x3 conv and the predictors (`conv_dims`) are optional; with the
    default single conv the state-dict keys are `conv.*`, `objectness_logits.*`,
    `anchor_deltas.*` as in Detectron2.
    """

    @configurable
    def __init__(self, *, in_channels: int, num_anchors: int, box_dim: int = 4, conv_dims: List[int] = (-1,)):
        """
        Args:
            in_channels: channels of every input level (they must agree).
            num_anchors: anchors per spatial position A.
            box_dim: B, 4 for axis-aligned boxes and 5 for rotated ones.
            conv_dims: output channels of the hidden convs; -1 means `in_channels`.
        """
        super().__init__()
        dims = [in_channels if d < 0 else d for d in conv_dims]
        if len(dims) == 1:
            self.conv = Conv2d(in_channels, dims[0], kernel_size=3, padding=1, activation=nn.ReLU())
        else:
            self.conv = nn.Sequential()
            for k, (d_in, d_out) in enumerate(zip([in_channels] + dims[:-1], dims)):
                self.conv.add_module(f"conv{k}", Conv2d(d_in, d_out, kernel_size=3, padding=1, activation=nn.ReLU()))
        self.objectness_logits = nn.Conv2d(dims[-1], num_anchors, kernel_size=1, stride=1)
        self.anchor_deltas = nn.Conv2d(dims[-1], num_anchors * box_dim, kernel_size=1, stride=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.constant_(module.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape):
        channels = {s.channels for s in input_shape}
        if len(channels) != 1:
            raise ValueError(f"StandardRPNHead needs the same channel count on every level, got {sorted(channels)}")
        anchor_generator = build_anchor_generator(cfg, input_shape)
        num_anchors = set(anchor_generator.num_anchors)
        if len(num_anchors) != 1:
            raise ValueError(f"StandardRPNHead needs the same number of anchors per position on every level, "
                             f"got {anchor_generator.num_anchors}")
        return {"in_channels": channels.pop(), "num_anchors": num_anchors.pop(),
                "box_dim": anchor_generator.box_dim, "conv_dims": cfg.MODEL.RPN.CONV_DIMS}

    def forward(self, features: List[torch.Tensor]):
        """
        Args:
            features: L tensors (N, C, Hi, Wi).
        Returns:
            list[Tensor]: L objectness logits (N, A, Hi, Wi).
            list[Tensor]: L anchor deltas (N, A*B, Hi, Wi).
        """
        logits, deltas = [], []
        for x in features:
            hidden = self.conv(x)
            logits.append(self.objectness_logits(hidden))
            deltas.append(self.anchor_deltas(hidden))
        return logits, deltas


@PROPOSAL_GENERATOR_REGISTRY.register()
class RPN(nn.Module):
    """Region Proposal Network: labels anchors against ground truth in training, and turns
    the top-scoring anchors into proposals (decode, clip, NMS per level, top-k)."""

    @configurable
    def __init__(
        self,
        *,
        in_features: List[str],
        head: nn.Module,
        anchor_generator: nn.Module,
        anchor_matcher: Matcher,
        box2box_transform: Box2BoxTransform,
        batch_size_per_image: int,
        positive_fraction: float,
        pre_nms_topk: Tuple[int, int],
        post_nms_topk: Tuple[int, int],
        nms_thresh: float = 0.7,
        min_box_size: float = 0.0,
        anchor_boundary_thresh: float = -1.0,
        loss_weight: Union[float, Dict[str, float]] = 1.0,
        box_reg_loss_type: str = "smooth_l1",
        smooth_l1_beta: float = 0.0,
    ):
        """
        Args:
            in_features: backbone feature names the RPN runs on.
            head: predicts per-level logits and deltas (e.g. StandardRPNHead).
            anchor_generator: makes the anchors of every level.
            anchor_matcher: labels anchors 1 / 0 / -1 from their IoU with ground truth.
            box2box_transform: the anchor -> box parameterization.
            batch_size_per_image: anchors sampled per image for the losses.
            positive_fraction: largest fraction of positives among them.
            pre_nms_topk, post_nms_topk: (train, test) proposal counts before NMS (per level)
                and after NMS (per image).
            nms_thresh: IoU threshold of the per-level NMS.
            min_box_size: proposals with a side below this (pixels) are dropped.
            anchor_boundary_thresh: legacy; if >= 0, anchors reaching further than this
                outside the image are ignored in training.
            loss_weight: one weight for both losses, or {"loss_rpn_cls": w, "loss_rpn_loc": w}.
            box_reg_loss_type: "smooth_l1" or "giou".
            smooth_l1_beta: beta of the smooth L1 loss (0 = L1).
        """
        super().__init__()
        self.in_features = list(in_features)
        self.rpn_head = head
        self.anchor_generator = anchor_generator
        self.anchor_matcher = anchor_matcher
        self.box2box_transform = box2box_transform
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.pre_nms_topk = {True: pre_nms_topk[0], False: pre_nms_topk[1]}
        self.post_nms_topk = {True: post_nms_topk[0], False: post_nms_topk[1]}
        self.nms_thresh = nms_thresh
        self.min_box_size = float(min_box_size)
        self.anchor_boundary_thresh = anchor_boundary_thresh
        if isinstance(loss_weight, (int, float)):
            loss_weight = {"loss_rpn_cls": float(loss_weight), "loss_rpn_loc": float(loss_weight)}
        self.loss_weight = loss_weight
        if box_reg_loss_type not in ("smooth_l1", "giou"):
            raise ValueError(f"RPN box_reg_loss_type must be 'smooth_l1' or 'giou', got {box_reg_loss_type!r}")
        self.box_reg_loss_type = box_reg_loss_type
        self.smooth_l1_beta = smooth_l1_beta

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        rpn = cfg.MODEL.RPN
        missing = [f for f in rpn.IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(f"MODEL.RPN.IN_FEATURES {list(rpn.IN_FEATURES)} names {missing}, which the backbone "
                             f"does not produce (it has {sorted(input_shape)})")
        shapes = [input_shape[f] for f in rpn.IN_FEATURES]
        return {
            "in_features": rpn.IN_FEATURES,
            "head": build_rpn_head(cfg, shapes),
            "anchor_generator": build_anchor_generator(cfg, shapes),
            "anchor_matcher": Matcher(rpn.IOU_THRESHOLDS, rpn.IOU_LABELS, allow_low_quality_matches=True),
            "box2box_transform": Box2BoxTransform(weights=rpn.BBOX_REG_WEIGHTS),
            "batch_size_per_image": rpn.BATCH_SIZE_PER_IMAGE,
            "positive_fraction": rpn.POSITIVE_FRACTION,
            "pre_nms_topk": (rpn.PRE_NMS_TOPK_TRAIN, rpn.PRE_NMS_TOPK_TEST),
            "post_nms_topk": (rpn.POST_NMS_TOPK_TRAIN, rpn.POST_NMS_TOPK_TEST),
            "nms_thresh": rpn.NMS_THRESH,
            "min_box_size": cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE,
            "anchor_boundary_thresh": rpn.BOUNDARY_THRESH,
            "loss_weight": {"loss_rpn_cls": rpn.LOSS_WEIGHT,
                            "loss_rpn_loc": rpn.BBOX_REG_LOSS_WEIGHT * rpn.LOSS_WEIGHT},
            "box_reg_loss_type": rpn.BBOX_REG_LOSS_TYPE,
            "smooth_l1_beta": rpn.SMOOTH_L1_BETA,
        }

    def _subsample_labels(self, labels):
        """Keep a random `batch_size_per_image` sample of labels (in place); the rest become -1."""
        pos_idx, neg_idx = subsample_labels(labels, self.batch_size_per_image, self.positive_fraction, 0)
        labels.fill_(-1)
        labels.scatter_(0, pos_idx, 1)
        labels.scatter_(0, neg_idx, 0)
        return labels

    @torch.no_grad()
    def label_and_sample_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]):
        """
        Args:
            anchors: L Boxes, the anchors of each level.
            gt_instances: N Instances with `gt_boxes`.
        Returns:
            list[Tensor]: N label vectors (R,) over all R anchors: 1 object, 0 background, -1 ignored.
            list[Tensor]: N tensors (R, 4), the matched ground-truth box of each anchor
                (meaningless where the label is not 1).
        """
        anchors = Boxes.cat(anchors)
        labels, matched_boxes = [], []
        for instances in gt_instances:
            gt_boxes = instances.gt_boxes
            matched_idxs, labels_i = self.anchor_matcher(pairwise_iou(gt_boxes, anchors))
            labels_i = labels_i.to(device=gt_boxes.device)
            if self.anchor_boundary_thresh >= 0:
                inside = anchors.inside_box(instances.image_size, self.anchor_boundary_thresh)
                labels_i[~inside] = -1
            labels.append(self._subsample_labels(labels_i))
            if len(gt_boxes) == 0:
                matched_boxes.append(torch.zeros_like(anchors.tensor))
            else:
                matched_boxes.append(gt_boxes.tensor[matched_idxs])
        return labels, matched_boxes

    def losses(self, anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        """
        Args:
            anchors: L Boxes of (Hi*Wi*A, 4).
            pred_objectness_logits: L tensors (N, Hi*Wi*A).
            gt_labels, gt_boxes: from `label_and_sample_anchors`.
            pred_anchor_deltas: L tensors (N, Hi*Wi*A, 4).
        Returns:
            {"loss_rpn_cls", "loss_rpn_loc"}, both summed over the sampled anchors and divided
            by batch_size_per_image * N.
        """
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)
        positive = gt_labels == 1
        storage = get_event_storage()
        storage.put_scalar("rpn/num_pos_anchors", positive.sum().item() / num_images)
        storage.put_scalar("rpn/num_neg_anchors", (gt_labels == 0).sum().item() / num_images)

        if self.box_reg_loss_type == "smooth_l1":
            all_anchors = type(anchors[0]).cat(anchors).tensor
            gt_deltas = torch.stack([self.box2box_transform.get_deltas(all_anchors, b) for b in gt_boxes])
            loss_loc = smooth_l1_loss(cat(pred_anchor_deltas, dim=1)[positive], gt_deltas[positive],
                                      self.smooth_l1_beta, reduction="sum")
        else:
            pred_boxes = cat(self._decode_proposals(anchors, pred_anchor_deltas), dim=1)
            pred_boxes = pred_boxes.reshape(-1, pred_boxes.shape[-1])
            flat_positive = positive.reshape(-1)
            loss_loc = giou_loss(pred_boxes[flat_positive], cat(gt_boxes)[flat_positive], reduction="sum")

        valid = gt_labels >= 0
        loss_cls = F.binary_cross_entropy_with_logits(
            cat(pred_objectness_logits, dim=1)[valid], gt_labels[valid].to(torch.float32), reduction="sum")
        normalizer = self.batch_size_per_image * num_images
        losses = {"loss_rpn_cls": loss_cls / normalizer, "loss_rpn_loc": loss_loc / normalizer}
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    def forward(self, images: ImageList, features: Dict[str, torch.Tensor],
                gt_instances: Optional[List[Instances]] = None):
        """
        Args:
            images: the N input images (for their sizes).
            features: backbone outputs by name, each (N, C, Hi, Wi).
            gt_instances: N Instances with `gt_boxes`; required in training.
        Returns:
            list[Instances]: N proposals with `proposal_boxes` and `objectness_logits`.
            dict[str, Tensor]: losses in training, else empty.
        """
        features = [features[f] for f in self.in_features]
        anchors = self.anchor_generator(features)
        logits, deltas = self.rpn_head(features)
        box_dim = self.anchor_generator.box_dim
        logits = [x.permute(0, 2, 3, 1).flatten(1) for x in logits]
        deltas = [x.view(x.shape[0], -1, box_dim, x.shape[-2], x.shape[-1]).permute(0, 3, 4, 1, 2).flatten(1, -2)
                  for x in deltas]
        losses: Dict[str, torch.Tensor] = {}
        if self.training:
            if gt_instances is None:
                raise ValueError("RPN needs gt_instances in training mode")
            gt_labels, gt_boxes = self.label_and_sample_anchors(anchors, gt_instances)
            losses = self.losses(anchors, logits, gt_labels, deltas, gt_boxes)
        proposals = self.predict_proposals(anchors, logits, deltas, images.image_sizes)
        return proposals, losses

    def predict_proposals(self, anchors: List[Boxes], pred_objectness_logits: List[torch.Tensor],
                          pred_anchor_deltas: List[torch.Tensor], image_sizes: List[Tuple[int, int]]):
        """Decode deltas and keep the top proposals (see `find_top_rpn_proposals`). Proposals are
        treated as constants by the ROI heads (approximate joint training), hence no_grad (a
        `with` block, not the decorator, which TorchScript cannot see through)."""
        with torch.no_grad():
            boxes = self._decode_proposals(anchors, pred_anchor_deltas)
            return find_top_rpn_proposals(boxes, pred_objectness_logits, image_sizes, self.nms_thresh,
                                          self.pre_nms_topk[self.training], self.post_nms_topk[self.training],
                                          self.min_box_size, self.training)

    def _decode_proposals(self, anchors: List[Boxes], pred_anchor_deltas: List[torch.Tensor]):
        """L tensors (N, Hi*Wi*A, B) of boxes from the anchors and the predicted deltas."""
        num_images = pred_anchor_deltas[0].shape[0]
        decoded = []
        for anchors_l, deltas_l in zip(anchors, pred_anchor_deltas):
            box_dim = anchors_l.tensor.size(1)
            expanded = anchors_l.tensor.unsqueeze(0).expand(num_images, -1, -1).reshape(-1, box_dim)
            boxes = self.box2box_transform.apply_deltas(deltas_l.reshape(-1, box_dim), expanded)
            decoded.append(boxes.view(num_images, -1, box_dim))
        return decoded
