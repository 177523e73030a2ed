"""Selecting the top proposals of an RPN and mixing ground truth into proposals."""
import math
from typing import List, Tuple

import torch

from detzoo.layers import batched_nms, cat
from detzoo.structures import Boxes, Instances

# Logit whose sigmoid is 1 - 1e-10: ground-truth boxes enter the proposals as near-certain.
_GT_OBJECTNESS_LOGIT = math.log((1.0 - 1e-10) / 1e-10)


def find_top_rpn_proposals(
    proposals: List[torch.Tensor],
    pred_objectness_logits: List[torch.Tensor],
    image_sizes: List[Tuple[int, int]],
    nms_thresh: float,
    pre_nms_topk: int,
    post_nms_topk: int,
    min_box_size: float,
    training: bool,
) -> List[Instances]:
    """Per image: top `pre_nms_topk` of every level, clip, drop small boxes, NMS within each
    level, keep the `post_nms_topk` best over all levels.

    Args:
        proposals: L tensors (N, Hi*Wi*A, 4), XYXY_ABS decoded boxes per level.
        pred_objectness_logits: L tensors (N, Hi*Wi*A).
        image_sizes: N (h, w).
        training: non-finite boxes or scores raise FloatingPointError in training and are
            dropped at inference.
    Returns:
        N Instances with `proposal_boxes` (Boxes) and `objectness_logits` (Tensor[R]), sorted by
        decreasing logit.
    """
    device = proposals[0].device
    batch_index = torch.arange(len(image_sizes), device=device)[:, None]
    level_scores, level_boxes, level_ids = [], [], []
    for level, (boxes_l, logits_l) in enumerate(zip(proposals, pred_objectness_logits)):
        k = logits_l.shape[1]
        if isinstance(k, torch.Tensor):  # a traced size: min() would freeze it into the graph
            k = torch.clamp(k, max=pre_nms_topk)
        else:
            k = min(k, pre_nms_topk)
        scores_l, index_l = logits_l.topk(k, dim=1)
        level_scores.append(scores_l)
        level_boxes.append(boxes_l[batch_index, index_l])
        level_ids.append(torch.full((k,), level, dtype=torch.int64, device=device))
    scores_all, boxes_all, levels = cat(level_scores, dim=1), cat(level_boxes, dim=1), cat(level_ids, dim=0)

    results: List[Instances] = []
    for i, image_size in enumerate(image_sizes):
        boxes, scores, lvl = Boxes(boxes_all[i]), scores_all[i], levels
        finite = torch.isfinite(boxes.tensor).all(dim=1) & torch.isfinite(scores)
        if not bool(finite.all()):
            if training:
                raise FloatingPointError("RPN predicted boxes or scores contain Inf/NaN: training has diverged.")
            boxes, scores, lvl = boxes[finite], scores[finite], lvl[finite]
        boxes.clip(image_size)
        big_enough = boxes.nonempty(threshold=min_box_size)
        # Always filtered in a traced graph: other inputs than the sample may have empty boxes.
        if torch.jit.is_tracing() or not bool(big_enough.all()):
            boxes, scores, lvl = boxes[big_enough], scores[big_enough], lvl[big_enough]
        # Detectron2 takes the post-NMS top-k per image (Detectron1 did it per batch in training).
        keep = batched_nms(boxes.tensor, scores, lvl, nms_thresh)[:post_nms_topk]
        result = Instances(image_size)
        result.proposal_boxes = boxes[keep]
        result.objectness_logits = scores[keep]
        results.append(result)
    return results


def add_ground_truth_to_proposals(gt, proposals):
    """Append each image's ground-truth boxes to its proposals.

    Args:
        gt (list[Instances] or list[Boxes]): N elements, with `gt_boxes` if Instances.
        proposals (list[Instances]): N elements with `proposal_boxes`, `objectness_logits`.
    Returns:
        list[Instances]: proposals followed by the ground truth (which carries its other
        fields, e.g. gt_classes, along).
    """
    if gt is None:
        raise ValueError("add_ground_truth_to_proposals needs the ground truth, got None")
    if len(proposals) != len(gt):
        raise ValueError(f"got proposals for {len(proposals)} images but ground truth for {len(gt)}")
    return [add_ground_truth_to_proposals_single_image(g, p) for g, p in zip(gt, proposals)]


def add_ground_truth_to_proposals_single_image(gt, proposals):
    """One image of `add_ground_truth_to_proposals`."""
    if isinstance(gt, Boxes):
        gt = Instances(proposals.image_size, gt_boxes=gt)
    device = proposals.objectness_logits.device
    gt_as_proposals = Instances(proposals.image_size, **gt.get_fields())
    gt_as_proposals.proposal_boxes = gt.gt_boxes
    gt_as_proposals.objectness_logits = torch.full((len(gt),), _GT_OBJECTNESS_LOGIT, device=device)
    missing = [k for k in proposals.get_fields() if not gt_as_proposals.has(k)]
    if missing:
        raise ValueError(f"proposals have fields {missing} that the ground truth lacks")
    return Instances.cat([proposals, gt_as_proposals])
