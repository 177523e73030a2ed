"""Panoptic FPN (Kirillov et al.): Mask R-CNN plus a semantic head on the same FPN, and the
heuristic that merges instances and stuff into one panoptic segmentation."""
import logging
from typing import Dict, List

import torch
from torch import nn

from detzoo.config import configurable
from detzoo.structures import Instances

from ..postprocessing import detector_postprocess, sem_seg_postprocess
from .build import META_ARCH_REGISTRY
from .rcnn import GeneralizedRCNN, _check_inputs
from .semantic_seg import _padded_targets, build_sem_seg_head

__all__ = ["PanopticFPN", "combine_semantic_and_instance_outputs"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class PanopticFPN(GeneralizedRCNN):
    """Outputs per image {"sem_seg", "instances", "panoptic_seg"}; "panoptic_seg" is
    (Tensor[H, W] int32 segment ids, list of segment dicts)."""

    @configurable
    def __init__(self, *, sem_seg_head: nn.Module, combine_overlap_thresh: float = 0.5,
                 combine_stuff_area_thresh: float = 4096, combine_instances_score_thresh: float = 0.5, **kwargs):
        """
        Args:
            sem_seg_head: the semantic head (class 0 = all things, 1.. = stuff).
            combine_overlap_thresh: an instance overlapping already-placed segments by more
                than this fraction of its area is dropped.
            combine_stuff_area_thresh: stuff regions smaller than this (pixels) are dropped.
            combine_instances_score_thresh: instances below this score are not placed.
            kwargs: GeneralizedRCNN's arguments.
        """
        super().__init__(**kwargs)
        self.sem_seg_head = sem_seg_head
        self.combine_overlap_thresh = combine_overlap_thresh
        self.combine_stuff_area_thresh = combine_stuff_area_thresh
        self.combine_instances_score_thresh = combine_instances_score_thresh

    @classmethod
    def from_config(cls, cfg):
        args = super().from_config(cfg)
        combine = cfg.MODEL.PANOPTIC_FPN.COMBINE
        args.update(combine_overlap_thresh=combine.OVERLAP_THRESH,
                    combine_stuff_area_thresh=combine.STUFF_AREA_LIMIT,
                    combine_instances_score_thresh=combine.INSTANCES_CONFIDENCE_THRESH,
                    sem_seg_head=build_sem_seg_head(cfg, args["backbone"].output_shape()))
        if not combine.ENABLED:
            logger.warning("MODEL.PANOPTIC_FPN.COMBINE.ENABLED is False: panoptic outputs are still produced; "
                           "it is no longer a switch.")
        weight = cfg.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT
        if weight != 1.0:
            # As in Detectron2: the weight multiplies the loss weights of the box predictor and
            # mask head (a dict of per-loss weights scales only the losses it names).
            logger.warning("MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT is applied to the ROI heads' loss weights")

            def scaled(w):
                return {k: v * weight for k, v in w.items()} if isinstance(w, dict) else w * weight

            roi_heads = args["roi_heads"]
            roi_heads.box_predictor.loss_weight = scaled(roi_heads.box_predictor.loss_weight)
            roi_heads.mask_head.loss_weight = scaled(roi_heads.mask_head.loss_weight)
        return args

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """Losses in training (needs "instances" and "sem_seg"); inference() otherwise."""
        _check_inputs(batched_inputs)
        if not self.training:
            return self.inference(batched_inputs)
        for key in ("sem_seg", "instances"):
            if key not in batched_inputs[0]:
                raise ValueError(f"training Panoptic FPN needs '{key}' in every input")
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        targets = _padded_targets(batched_inputs, self.device, self.backbone.size_divisibility,
                                  self.sem_seg_head.ignore_value, self.backbone.padding_constraints)
        _, losses = self.sem_seg_head(features, targets)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        losses.update(proposal_losses)
        losses.update(detector_losses)
        return losses

    def inference(self, batched_inputs: List[Dict[str, torch.Tensor]], do_postprocess: bool = True):
        """
        Returns:
            with do_postprocess: per image {"sem_seg", "instances", "panoptic_seg"} at the
            requested size; else (semantic logits, detections) at the network input size.
        """
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        sem_seg_results, _ = self.sem_seg_head(features, None)
        proposals, _ = self.proposal_generator(images, features, None)
        detector_results, _ = self.roi_heads(images, features, proposals, None)
        if not do_postprocess:
            return sem_seg_results, detector_results
        processed = []
        for sem_seg, detections, inputs, size in zip(sem_seg_results, detector_results, batched_inputs,
                                                     images.image_sizes):
            height, width = inputs.get("height", size[0]), inputs.get("width", size[1])
            sem_seg_r = sem_seg_postprocess(sem_seg, size, height, width)
            detector_r = detector_postprocess(detections, height, width)
            panoptic_r = combine_semantic_and_instance_outputs(
                detector_r, sem_seg_r.argmax(dim=0), self.combine_overlap_thresh,
                self.combine_stuff_area_thresh, self.combine_instances_score_thresh)
            processed.append({"sem_seg": sem_seg_r, "instances": detector_r, "panoptic_seg": panoptic_r})
        return processed


def combine_semantic_and_instance_outputs(instance_results: Instances, semantic_results: torch.Tensor,
                                          overlap_threshold: float, stuff_area_thresh: float,
                                          instances_score_thresh: float):
    """Paint instances (by decreasing score) then stuff into one segment-id map, following
    panopticapi's combine_semantic_and_instance_predictions.

    Args:
        instance_results: detections with scores, pred_classes and pred_masks (R, H, W).
        semantic_results (Tensor[H, W]): contiguous semantic class per pixel; 0 means "thing".
    Returns:
        Tensor[H, W] int32: segment id per pixel (0 = void).
        list[dict]: segments, with "id", "isthing", "category_id" and "score" + "instance_id"
            (things) or "area" (stuff).
    """
    panoptic = torch.zeros_like(semantic_results, dtype=torch.int32)
    segments = []
    masks = instance_results.pred_masks.to(dtype=torch.bool, device=panoptic.device)
    for index in torch.argsort(-instance_results.scores):
        score = instance_results.scores[index].item()
        if score < instances_score_thresh:
            break
        mask = masks[index]
        area = mask.sum().item()
        if area == 0:
            continue
        taken = mask & (panoptic > 0)
        taken_area = taken.sum().item()
        if taken_area / area > overlap_threshold:
            continue
        if taken_area > 0:
            mask = mask & (panoptic == 0)
        segment_id = len(segments) + 1
        panoptic[mask] = segment_id
        segments.append({"id": segment_id, "isthing": True, "score": score,
                         "category_id": instance_results.pred_classes[index].item(),
                         "instance_id": index.item()})
    for label in torch.unique(semantic_results).cpu().tolist():
        if label == 0:  # the "things" class of the semantic head
            continue
        mask = (semantic_results == label) & (panoptic == 0)
        area = mask.sum().item()
        if area < stuff_area_thresh:
            continue
        segment_id = len(segments) + 1
        panoptic[mask] = segment_id
        segments.append({"id": segment_id, "isthing": False, "category_id": label, "area": area})
    return panoptic, segments
