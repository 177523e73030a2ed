"""Test-time augmentation for R-CNN models: detect on several resized (and flipped) copies of
each image, merge the boxes with NMS, then average the masks predicted on every copy."""
import copy
from contextlib import contextmanager
from typing import List

import numpy as np
import torch
from fvcore.transforms import HFlipTransform, NoOpTransform
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detzoo.config import configurable
from detzoo.structures import Boxes, Instances

from .meta_arch import GeneralizedRCNN
from .postprocessing import detector_postprocess
from .roi_heads.fast_rcnn import fast_rcnn_inference_single_image

__all__ = ["DatasetMapperTTA", "GeneralizedRCNNWithTTA"]


class DatasetMapperTTA:
    """Turns one model input dict into its augmented copies: each of `min_sizes` (short side,
    capped at `max_size`), with and without a horizontal flip. Each copy carries the
    "transforms" that map the original image to it."""

    @configurable
    def __init__(self, min_sizes: List[int], max_size: int, flip: bool):
        self.min_sizes = min_sizes
        self.max_size = max_size
        self.flip = flip

    @classmethod
    def from_config(cls, cfg):
        return {"min_sizes": cfg.TEST.AUG.MIN_SIZES, "max_size": cfg.TEST.AUG.MAX_SIZE, "flip": cfg.TEST.AUG.FLIP}

    def __call__(self, dataset_dict):
        """
        Args:
            dataset_dict: with "image" (Tensor[C, H, W]) and the original "height", "width".
        Returns:
            list[dict]: len(min_sizes) * (2 if flip else 1) copies with "image" and "transforms".
        """
        from detzoo.data.transforms import RandomFlip, ResizeShortestEdge, ResizeTransform, apply_augmentations

        image = dataset_dict["image"].permute(1, 2, 0).numpy()
        original = (dataset_dict["height"], dataset_dict["width"])
        # The input may already be a resized version of the original image.
        pre = NoOpTransform() if image.shape[:2] == original else \
            ResizeTransform(original[0], original[1], image.shape[0], image.shape[1])
        candidates = []
        for size in self.min_sizes:
            resize = ResizeShortestEdge(size, self.max_size)
            candidates.append([resize])
            if self.flip:
                candidates.append([resize, RandomFlip(prob=1.0)])
        copies = []
        for augs in candidates:
            new_image, transforms = apply_augmentations(augs, np.copy(image))
            d = copy.deepcopy(dataset_dict)
            d["transforms"] = pre + transforms
            d["image"] = torch.from_numpy(np.ascontiguousarray(new_image.transpose(2, 0, 1)))
            copies.append(d)
        return copies


class GeneralizedRCNNWithTTA(nn.Module):
    """Wraps a GeneralizedRCNN; calling it has GeneralizedRCNN.forward's interface (inference)."""

    def __init__(self, cfg, model, tta_mapper=None, batch_size=3):
        """
        Args:
            cfg: the model's config (TEST.AUG.*, ROI_HEADS.NUM_CLASSES, NMS_THRESH_TEST, ...).
            model: a GeneralizedRCNN (DDP-wrapped is fine).
            tta_mapper: input dict -> augmented dicts; default DatasetMapperTTA(cfg).
            batch_size: augmented images run through the model this many at a time.
        """
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        if not isinstance(model, GeneralizedRCNN):
            raise TypeError(f"TTA supports GeneralizedRCNN models only, got {type(model).__name__}")
        if cfg.MODEL.KEYPOINT_ON:
            raise ValueError("TTA does not support keypoint models (MODEL.KEYPOINT_ON)")
        if cfg.MODEL.LOAD_PROPOSALS:
            raise ValueError("TTA does not support precomputed proposals (MODEL.LOAD_PROPOSALS)")
        self.cfg = cfg.clone()
        self.model = model
        self.tta_mapper = DatasetMapperTTA(cfg) if tta_mapper is None else tta_mapper
        self.batch_size = batch_size

    @contextmanager
    def _turn_off_roi_heads(self, attrs):
        """Temporarily set the given `roi_heads` flags (e.g. "mask_on") to False."""
        heads = self.model.roi_heads
        saved = {a: getattr(heads, a) for a in attrs if hasattr(heads, a)}
        for a in saved:
            setattr(heads, a, False)
        try:
            yield
        finally:
            for a, v in saved.items():
                setattr(heads, a, v)

    def _batch_inference(self, batched_inputs, detected_instances=None):
        """model.inference(..., do_postprocess=False) in chunks of `batch_size`."""
        outputs = []
        for start in range(0, len(batched_inputs), self.batch_size):
            chunk = batched_inputs[start:start + self.batch_size]
            given = None if detected_instances is None else detected_instances[start:start + self.batch_size]
            outputs.extend(self.model.inference(chunk, given, do_postprocess=False))
        return outputs

    def __call__(self, batched_inputs):
        """Inputs may carry "file_name" instead of "image" (read in the model's format)."""
        return [self._inference_one_image(self._with_image(x)) for x in batched_inputs]

    def _with_image(self, dataset_dict):
        d = copy.copy(dataset_dict)
        if "image" not in d:
            from detzoo.data.detection_utils import read_image

            image = read_image(d.pop("file_name"), self.model.input_format)
            d["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if "height" not in d and "width" not in d:
            d["height"], d["width"] = d["image"].shape[1], d["image"].shape[2]
        return d

    def _inference_one_image(self, inputs):
        original_shape = (inputs["height"], inputs["width"])
        augmented = self.tta_mapper(inputs)
        transforms = [x.pop("transforms") for x in augmented]
        with self._turn_off_roi_heads(["mask_on", "keypoint_on"]):
            boxes, scores, classes = self._get_augmented_boxes(augmented, transforms)
        merged = self._merge_detections(boxes, scores, classes, original_shape)
        if not self.cfg.MODEL.MASK_ON:
            return {"instances": merged}
        per_copy = self._rescale_detected_boxes(augmented, merged, transforms)
        outputs = self._batch_inference(augmented, per_copy)
        del augmented, per_copy
        merged.pred_masks = self._reduce_pred_masks(outputs, transforms)
        return {"instances": detector_postprocess(merged, *original_shape)}

    def _get_augmented_boxes(self, augmented_inputs, transforms):
        """All copies' detections, boxes mapped back to the original image."""
        outputs = self._batch_inference(augmented_inputs)
        boxes, scores, classes = [], [], []
        for output, tfm in zip(outputs, transforms):
            pred = output.pred_boxes.tensor
            boxes.append(torch.from_numpy(tfm.inverse().apply_box(pred.cpu().numpy())).to(pred.device))
            scores.append(output.scores)
            classes.append(output.pred_classes)
        return torch.cat(boxes, dim=0), torch.cat(scores, dim=0), torch.cat(classes, dim=0)

    def _merge_detections(self, boxes, scores, classes, shape_hw):
        """Per-class NMS over the union of every copy's detections."""
        num_classes = self.cfg.MODEL.ROI_HEADS.NUM_CLASSES
        # fast_rcnn_inference takes (R, K+1) scores; each box scores only for its own class.
        scores_2d = torch.zeros(len(boxes), num_classes + 1, device=boxes.device)
        scores_2d[torch.arange(len(boxes), device=boxes.device), classes] = scores
        merged, _ = fast_rcnn_inference_single_image(boxes, scores_2d, shape_hw, 1e-8,
                                                     self.cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
                                                     self.cfg.TEST.DETECTIONS_PER_IMAGE)
        return merged

    def _rescale_detected_boxes(self, augmented_inputs, merged, transforms):
        """The merged detections in each copy's coordinates."""
        result = []
        for inputs, tfm in zip(augmented_inputs, transforms):
            boxes = torch.from_numpy(tfm.apply_box(merged.pred_boxes.tensor.cpu().numpy()))
            result.append(Instances(image_size=inputs["image"].shape[1:3], pred_boxes=Boxes(boxes),
                                    pred_classes=merged.pred_classes, scores=merged.scores))
        return result

    def _reduce_pred_masks(self, outputs, transforms):
        """Average the copies' M x M mask probabilities (box-relative, so resizing needs no undo;
        flips are undone)."""
        masks = []
        for output, tfm in zip(outputs, transforms):
            m = output.pred_masks
            if any(isinstance(t, HFlipTransform) for t in tfm.transforms):
                m = m.flip(dims=[3])
            masks.append(m)
        return torch.stack(masks, dim=0).mean(dim=0)
