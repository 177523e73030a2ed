"""Fast R-CNN box predictor: class scores and per-class box deltas for each region, their
losses, and inference (score threshold, per-class NMS, top-k).

Shapes: R regions over the batch, Ri in image i, K foreground classes (index K = background),
B = 4 box parameters.
"""
from typing import Dict, List, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F

from detzoo.config import configurable
from detzoo.layers import ShapeSpec, batched_nms, cat, cross_entropy, nonzero_tuple
from detzoo.structures import Boxes, Instances
from detzoo.utils.events import get_event_storage

from ..box_regression import Box2BoxTransform, _dense_box_regression_loss

__all__ = ["fast_rcnn_inference", "fast_rcnn_inference_single_image", "FastRCNNOutputLayers"]


def fast_rcnn_inference(boxes: List[torch.Tensor], scores: List[torch.Tensor], image_shapes: List[Tuple[int, int]],
                        score_thresh: float, nms_thresh: float, topk_per_image: int):
    """Detections of every image (see `fast_rcnn_inference_single_image`).

    Args:
        boxes (list[Tensor]): per image (Ri, K*4) class-specific or (Ri, 4) agnostic, XYXY_ABS.
        scores (list[Tensor]): per image (Ri, K+1) class probabilities.
        image_shapes (list[tuple]): per image (h, w).
    Returns:
        list[Instances]: detections with pred_boxes, scores, pred_classes.
        list[Tensor]: per image, the index in [0, Ri) of the region each detection came from.
    """
    results = [fast_rcnn_inference_single_image(b, s, shape, score_thresh, nms_thresh, topk_per_image)
               for b, s, shape in zip(boxes, scores, image_shapes)]
    return [r[0] for r in results], [r[1] for r in results]


def fast_rcnn_inference_single_image(boxes: torch.Tensor, scores: torch.Tensor, image_shape: Tuple[int, int],
                                     score_thresh: float, nms_thresh: float, topk_per_image: int):
    """Clip boxes, keep (region, class) pairs scoring above `score_thresh`, NMS per class,
    keep the `topk_per_image` best (all if < 0). Regions with non-finite values are dropped."""
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not bool(finite.all()):
        boxes, scores = boxes[finite], scores[finite]
    scores = scores[:, :-1]
    num_reg_classes = boxes.shape[1] // 4
    clipped = Boxes(boxes.reshape(-1, 4))
    clipped.clip(image_shape)
    boxes = clipped.tensor.view(-1, num_reg_classes, 4)

    above = scores > score_thresh
    region_class = above.nonzero()  # (D, 2): region index, class index
    boxes = boxes[region_class[:, 0], 0] if num_reg_classes == 1 else boxes[above]
    scores = scores[above]

    keep = batched_nms(boxes, scores, region_class[:, 1], nms_thresh)
    if topk_per_image >= 0:
        keep = keep[:topk_per_image]
    boxes, scores, region_class = boxes[keep], scores[keep], region_class[keep]

    result = Instances(image_shape)
    result.pred_boxes = Boxes(boxes)
    result.scores = scores
    result.pred_classes = region_class[:, 1]
    return result, region_class[:, 0]


def _log_classification_stats(pred_logits, gt_classes, prefix="fast_rcnn"):
    """Record classification accuracy, foreground accuracy and false-negative rate."""
    num_instances = gt_classes.numel()
    if num_instances == 0:
        return
    pred_classes = pred_logits.argmax(dim=1)
    bg_class = pred_logits.shape[1] - 1
    fg = (gt_classes >= 0) & (gt_classes < bg_class)
    num_fg = int(fg.sum())
    storage = get_event_storage()
    storage.put_scalar(f"{prefix}/cls_accuracy", (pred_classes == gt_classes).sum().item() / num_instances)
    if num_fg > 0:
        fg_pred = pred_classes[fg]
        storage.put_scalar(f"{prefix}/fg_cls_accuracy", (fg_pred == gt_classes[fg]).sum().item() / num_fg)
        storage.put_scalar(f"{prefix}/false_negative", (fg_pred == bg_class).sum().item() / num_fg)


class FastRCNNOutputLayers(nn.Module):
    """Two linear layers on the box-head features: `cls_score` (K+1 logits) and `bbox_pred`
    (K*4 class-specific or 4 agnostic deltas)."""

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        box2box_transform,
        num_classes: int,
        test_score_thresh: float = 0.0,
        test_nms_thresh: float = 0.5,
        test_topk_per_image: int = 100,
        cls_agnostic_bbox_reg: bool = False,
        smooth_l1_beta: float = 0.0,
        box_reg_loss_type: str = "smooth_l1",
        loss_weight: Union[float, Dict[str, float]] = 1.0,
        use_fed_loss: bool = False,
        use_sigmoid_ce: bool = False,
        get_fed_loss_cls_weights=None,
        fed_loss_num_classes: int = 50,
    ):
        """
        Args:
            input_shape: the box head's output (channels, and height/width if not flattened).
            box2box_transform: proposal -> box parameterization.
            num_classes: K.
            test_score_thresh, test_nms_thresh, test_topk_per_image: inference settings.
            cls_agnostic_bbox_reg: one set of deltas for all classes.
            smooth_l1_beta: beta of the smooth L1 box loss (0 = L1).
            box_reg_loss_type: "smooth_l1", "giou", "diou" or "ciou".
            loss_weight: one weight, or {"loss_cls": w, "loss_box_reg": w}.
            use_sigmoid_ce: per-class sigmoid cross-entropy instead of softmax.
            use_fed_loss: federated loss (LVIS): only the ground-truth classes and a sample of
                others, weighted by `get_fed_loss_cls_weights()` (a callable returning (K,)),
                contribute. Implies sigmoid cross-entropy.
            fed_loss_num_classes: number of classes sampled per iteration for the fed loss.
        """
        super().__init__()
        if isinstance(input_shape, int):
            input_shape = ShapeSpec(channels=input_shape)
        self.num_classes = num_classes
        input_size = input_shape.channels * (input_shape.width or 1) * (input_shape.height or 1)
        self.cls_score = nn.Linear(input_size, num_classes + 1)
        box_dim = len(box2box_transform.weights)
        self.bbox_pred = nn.Linear(input_size, (1 if cls_agnostic_bbox_reg else num_classes) * box_dim)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.constant_(layer.bias, 0)

        self.box2box_transform = box2box_transform
        self.smooth_l1_beta = smooth_l1_beta
        self.test_score_thresh = test_score_thresh
        self.test_nms_thresh = test_nms_thresh
        self.test_topk_per_image = test_topk_per_image
        self.box_reg_loss_type = box_reg_loss_type
        if isinstance(loss_weight, (int, float)):
            loss_weight = {"loss_cls": float(loss_weight), "loss_box_reg": float(loss_weight)}
        self.loss_weight = loss_weight
        self.use_fed_loss = use_fed_loss
        self.use_sigmoid_ce = use_sigmoid_ce or use_fed_loss
        self.fed_loss_num_classes = fed_loss_num_classes
        if use_fed_loss:
            if get_fed_loss_cls_weights is None:
                raise ValueError("use_fed_loss=True needs get_fed_loss_cls_weights (class frequency weights)")
            weights = torch.as_tensor(get_fed_loss_cls_weights(), dtype=torch.float32)
            if weights.shape != (num_classes,):
                raise ValueError(f"fed loss class weights must have shape ({num_classes},), got {tuple(weights.shape)}")
            self.register_buffer("fed_loss_cls_weights", weights, persistent=False)

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = cfg.MODEL.ROI_BOX_HEAD
        args = {
            "input_shape": input_shape,
            "box2box_transform": Box2BoxTransform(weights=head.BBOX_REG_WEIGHTS),
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "cls_agnostic_bbox_reg": head.CLS_AGNOSTIC_BBOX_REG,
            "smooth_l1_beta": head.SMOOTH_L1_BETA,
            "test_score_thresh": cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
            "test_nms_thresh": cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "box_reg_loss_type": head.BBOX_REG_LOSS_TYPE,
            "loss_weight": {"loss_box_reg": head.BBOX_REG_LOSS_WEIGHT},
            "use_fed_loss": head.USE_FED_LOSS,
            "use_sigmoid_ce": head.USE_SIGMOID_CE,
            "fed_loss_num_classes": head.FED_LOSS_NUM_CLASSES,
        }
        if head.USE_FED_LOSS:
            # The class frequencies come from the training datasets' metadata; imported here
            # only when asked for, so models do not depend on the data package otherwise.
            from detzoo.data.detection_utils import get_fed_loss_cls_weights

            names, power = cfg.DATASETS.TRAIN, head.FED_LOSS_FREQ_WEIGHT_POWER
            args["get_fed_loss_cls_weights"] = lambda: get_fed_loss_cls_weights(names, power)
        return args

    def forward(self, x):
        """
        Args:
            x (Tensor[R, ...]): region features (flattened if more than 2-D).
        Returns:
            Tensor[R, K+1]: class logits; Tensor[R, K*4] or [R, 4]: box deltas.
        """
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)

    def losses(self, predictions, proposals):
        """
        Args:
            predictions: output of forward().
            proposals (list[Instances]): with proposal_boxes, gt_classes and (for
                foreground) gt_boxes, in the order the features were computed.
        Returns:
            {"loss_cls", "loss_box_reg"}.
        """
        scores, proposal_deltas = predictions
        gt_classes = cat([p.gt_classes for p in proposals], dim=0) if proposals else torch.empty(0)
        _log_classification_stats(scores, gt_classes)
        if proposals:
            proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
            if proposal_boxes.requires_grad:
                raise ValueError("proposal boxes must not require gradients")
            # Proposals without gt_boxes are all background; their boxes are placeholders.
            gt_boxes = cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals], dim=0)
        else:
            proposal_boxes = gt_boxes = torch.empty((0, 4), device=proposal_deltas.device)

        if self.use_sigmoid_ce:
            loss_cls = self.sigmoid_cross_entropy_loss(scores, gt_classes)
        else:
            loss_cls = cross_entropy(scores, gt_classes, reduction="mean")
        losses = {"loss_cls": loss_cls,
                  "loss_box_reg": self.box_reg_loss(proposal_boxes, gt_boxes, proposal_deltas, gt_classes)}
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    def get_fed_loss_classes(self, gt_classes, num_fed_loss_classes, num_classes, weight):
        """The ground-truth classes plus classes sampled (by `weight`) up to `num_fed_loss_classes`."""
        unique = torch.unique(gt_classes)
        prob = unique.new_ones(num_classes + 1).float()
        prob[-1] = 0
        if len(unique) < num_fed_loss_classes:
            prob[:num_classes] = weight.float().clone()
            prob[unique] = 0
            sampled = torch.multinomial(prob, num_fed_loss_classes - len(unique), replacement=False)
            unique = torch.cat([unique, sampled])
        return unique

    def sigmoid_cross_entropy_loss(self, pred_class_logits, gt_classes):
        """Per-class binary cross-entropy (background = all zeros), divided by R; with the fed
        loss only the selected classes count."""
        if pred_class_logits.numel() == 0:
            return pred_class_logits.new_zeros([1])[0]
        num_regions = pred_class_logits.shape[0]
        num_classes = pred_class_logits.shape[1] - 1
        target = pred_class_logits.new_zeros(num_regions, num_classes + 1)
        target[range(num_regions), gt_classes] = 1
        target = target[:, :num_classes]
        weight = 1
        if self.use_fed_loss:
            fed_classes = self.get_fed_loss_classes(gt_classes, self.fed_loss_num_classes, num_classes,
                                                    self.fed_loss_cls_weights)
            class_mask = fed_classes.new_zeros(num_classes + 1)
            class_mask[fed_classes] = 1
            weight = class_mask[:num_classes].view(1, num_classes).expand(num_regions, num_classes).float()
        loss = F.binary_cross_entropy_with_logits(pred_class_logits[:, :-1], target, reduction="none")
        return torch.sum(loss * weight) / num_regions

    def box_reg_loss(self, proposal_boxes, gt_boxes, pred_deltas, gt_classes):
        """Box loss of the foreground regions, with the deltas of their ground-truth class,
        divided by the number of all regions R (each foreground region weighs the same
        whatever the batch's foreground count).

        Args:
            proposal_boxes, gt_boxes (Tensor[R, 4]); pred_deltas (Tensor[R, K*4] or [R, 4]);
            gt_classes (Tensor[R]).
        """
        box_dim = proposal_boxes.shape[1]
        fg = nonzero_tuple((gt_classes >= 0) & (gt_classes < self.num_classes))[0]
        if pred_deltas.shape[1] == box_dim:
            fg_deltas = pred_deltas[fg]
        else:
            fg_deltas = pred_deltas.view(-1, self.num_classes, box_dim)[fg, gt_classes[fg]]
        loss = _dense_box_regression_loss([proposal_boxes[fg]], self.box2box_transform, [fg_deltas.unsqueeze(0)],
                                          [gt_boxes[fg]], ..., self.box_reg_loss_type, self.smooth_l1_beta)
        return loss / max(gt_classes.numel(), 1.0)

    def inference(self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]):
        """Detections per image (see `fast_rcnn_inference`)."""
        boxes = self.predict_boxes(predictions, proposals)
        scores = self.predict_probs(predictions, proposals)
        return fast_rcnn_inference(boxes, scores, [p.image_size for p in proposals], self.test_score_thresh,
                                   self.test_nms_thresh, self.test_topk_per_image)

    def predict_boxes_for_gt_classes(self, predictions, proposals):
        """Per image (Ri, 4): each region's box decoded with the deltas of its gt class
        (used by cascade stages in training)."""
        if not proposals:
            return []
        _, deltas = predictions
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
        num_regions, box_dim = proposal_boxes.shape
        boxes = self.box2box_transform.apply_deltas(deltas, proposal_boxes)
        num_reg_classes = boxes.shape[1] // box_dim
        if num_reg_classes > 1:
            # Background / ignored regions have no delta of their own: clamp to a valid index.
            gt_classes = torch.cat([p.gt_classes for p in proposals], dim=0).clamp(0, num_reg_classes - 1)
            boxes = boxes.view(num_regions, num_reg_classes, box_dim)[
                torch.arange(num_regions, device=boxes.device), gt_classes]
        return boxes.split([len(p) for p in proposals])

    def predict_boxes(self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]):
        """Per image (Ri, K*4) or (Ri, 4): the decoded boxes."""
        if len(proposals) == 0:
            return []
        _, deltas = predictions
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
        return self.box2box_transform.apply_deltas(deltas, proposal_boxes).split([len(p) for p in proposals])

    def predict_probs(self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]):
        """Per image (Ri, K+1): class probabilities (softmax, or sigmoid for sigmoid CE)."""
        scores, _ = predictions
        probs = scores.sigmoid() if self.use_sigmoid_ce else F.softmax(scores, dim=-1)
        return probs.split([len(p) for p in proposals], dim=0)
