"""R-CNN models: backbone -> proposals -> ROI heads -> post-processing.

Input: a list of dicts, one per image:
    "image": Tensor[C, H, W] in cfg.INPUT.FORMAT channel order, 0-255 values;
    "height", "width" (optional): the output resolution wanted (usually the original size);
    "instances" (training): Instances with gt_boxes, gt_classes (+ gt_masks, gt_keypoints);
    "proposals" (Fast R-CNN): Instances with proposal_boxes, objectness_logits.
Output (inference): a list of dicts with "instances" (GeneralizedRCNN) or "proposals"
(ProposalNetwork) at the requested resolution.
"""
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn

from detzoo.config import configurable
from detzoo.layers import move_device_like
from detzoo.structures import ImageList, Instances
from detzoo.utils.events import get_event_storage

from ..backbone import Backbone, build_backbone
from ..postprocessing import detector_postprocess
from ..proposal_generator import build_proposal_generator
from ..roi_heads import build_roi_heads
from .build import META_ARCH_REGISTRY

__all__ = ["GeneralizedRCNN", "ProposalNetwork"]


class _ImageNormalizer(nn.Module):
    """Shared input handling: pixel normalization (non-persistent buffers, so they are not in
    the state dict, as in Detectron2) and batching into a padded ImageList."""

    def _register_pixel_stats(self, pixel_mean, pixel_std):
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        if self.pixel_mean.shape != self.pixel_std.shape:
            raise ValueError(f"pixel_mean {list(pixel_mean)} and pixel_std {list(pixel_std)} differ in length")

    @property
    def device(self):
        return self.pixel_mean.device

    def _move_to_current_device(self, x):
        return move_device_like(x, self.pixel_mean)

    def preprocess_image(self, batched_inputs: List[Dict[str, torch.Tensor]]) -> ImageList:
        """Normalize and pad the input images to one (N, C, H, W) batch."""
        images = [(self._move_to_current_device(x["image"]) - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]
        return ImageList.from_tensors(images, self.backbone.size_divisibility,
                                      padding_constraints=self.backbone.padding_constraints)


def _check_inputs(batched_inputs):
    if not isinstance(batched_inputs, (list, tuple)) or not batched_inputs:
        raise ValueError(f"the model expects a non-empty list of dicts, one per image; got {type(batched_inputs).__name__}")
    for i, x in enumerate(batched_inputs):
        if not isinstance(x, dict) or "image" not in x:
            raise ValueError(f"input {i} must be a dict with an 'image' tensor (C, H, W); got "
                             f"{sorted(x) if isinstance(x, dict) else type(x).__name__}")
        if not isinstance(x["image"], torch.Tensor) or x["image"].dim() != 3:
            raise ValueError(f"input {i}: 'image' must be a 3-D tensor (C, H, W), got "
                             f"{getattr(x['image'], 'shape', type(x['image']).__name__)}")


@META_ARCH_REGISTRY.register()
class GeneralizedRCNN(_ImageNormalizer):
    """Faster / Mask / Keypoint / Cascade R-CNN: a backbone, an optional proposal generator
    (none means proposals come with the inputs, as in Fast R-CNN) and ROI heads."""

    @configurable
    def __init__(self, *, backbone: Backbone, proposal_generator: Optional[nn.Module], roi_heads: nn.Module,
                 pixel_mean, pixel_std, input_format: Optional[str] = None, vis_period: int = 0):
        """
        Args:
            backbone: features from the normalized images.
            proposal_generator: e.g. an RPN; None to read "proposals" from the inputs.
            roi_heads: per-region heads.
            pixel_mean, pixel_std: per-channel normalization of the input images.
            input_format: channel order of the inputs ("BGR" / "RGB"), for visualization.
            vis_period: put a picture of GT and proposals into the event storage every this
                many training iterations (0 = never).
        """
        super().__init__()
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.roi_heads = roi_heads
        self.input_format = input_format
        self.vis_period = vis_period
        if vis_period > 0 and input_format is None:
            raise ValueError("vis_period > 0 needs input_format to draw the images")
        self._register_pixel_stats(pixel_mean, pixel_std)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "proposal_generator": build_proposal_generator(cfg, backbone.output_shape()),
            "roi_heads": build_roi_heads(cfg, backbone.output_shape()),
            "input_format": cfg.INPUT.FORMAT,
            "vis_period": cfg.VIS_PERIOD,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    def visualize_training(self, batched_inputs, proposals):
        """Put the first image with its GT boxes beside its top-20 proposals into the storage."""
        from detzoo.utils.visualizer import Visualizer, convert_image_to_rgb

        storage = get_event_storage()
        for inputs, props in zip(batched_inputs, proposals):
            image = convert_image_to_rgb(inputs["image"].permute(1, 2, 0), self.input_format)
            with_gt = Visualizer(image, None).overlay_instances(boxes=inputs["instances"].gt_boxes).get_image()
            boxes = props.proposal_boxes[: min(20, len(props.proposal_boxes))].tensor.cpu().numpy()
            with_props = Visualizer(image, None).overlay_instances(boxes=boxes).get_image()
            picture = np.concatenate((with_gt, with_props), axis=1).transpose(2, 0, 1)
            storage.put_image("Left: GT bounding boxes;  Right: Predicted proposals", picture)
            break

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """Losses (dict of scalar tensors) in training; `inference()` results otherwise."""
        if not torch.jit.is_scripting():
            _check_inputs(batched_inputs)
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        gt_instances = None
        if "instances" in batched_inputs[0]:
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        features = self.backbone(images.tensor)
        proposals, proposal_losses = self._proposals(batched_inputs, images, features, gt_instances)
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        if self.vis_period > 0 and get_event_storage().iter % self.vis_period == 0:
            self.visualize_training(batched_inputs, proposals)
        losses = dict(detector_losses)
        losses.update(proposal_losses)
        return losses

    def _proposals(self, batched_inputs: List[Dict[str, torch.Tensor]], images: ImageList,
                   features: Dict[str, torch.Tensor], gt_instances: Optional[List[Instances]]):
        if self.proposal_generator is None:
            return self._given_proposals(batched_inputs)
        return self.proposal_generator(images, features, gt_instances)

    def _given_proposals(self, batched_inputs):
        """The inputs' "proposals" (Fast R-CNN), and no losses."""
        if "proposals" not in batched_inputs[0]:
            raise ValueError("this model has no proposal generator (MODEL.PROPOSAL_GENERATOR.NAME is "
                             "PrecomputedProposals): every input needs a 'proposals' Instances")
        return [x["proposals"].to(self.device) for x in batched_inputs], {}

    def inference(self, batched_inputs: List[Dict[str, torch.Tensor]],
                  detected_instances: Optional[List[Instances]] = None, do_postprocess: bool = True):
        """
        Args:
            batched_inputs: as in forward().
            detected_instances: if given, skip detection and only predict masks/keypoints for
                these boxes (Instances with pred_boxes, pred_classes).
            do_postprocess: resize outputs to each input's "height"/"width"; if False return
                raw Instances at the network input size.
        Returns:
            list[dict]: {"instances": Instances} per image (or list[Instances] if not post-processed).
        """
        if self.training:
            raise RuntimeError("inference() needs eval mode; call model.eval() first")
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        if detected_instances is None:
            proposals, _ = self._proposals(batched_inputs, images, features, None)
            results, _ = self.roi_heads(images, features, proposals, None)
        else:
            results = self.roi_heads.forward_with_given_boxes(
                features, [x.to(self.device) for x in detected_instances])
        if do_postprocess:
            if torch.jit.is_scripting():
                raise RuntimeError("post-processing is not scriptable; call with do_postprocess=False")
            return GeneralizedRCNN._postprocess(results, batched_inputs, images.image_sizes)
        return results

    @staticmethod
    def _postprocess(instances, batched_inputs, image_sizes):
        """Rescale each image's detections to its requested output size."""
        processed = []
        for result, inputs, size in zip(instances, batched_inputs, image_sizes):
            height, width = inputs.get("height", size[0]), inputs.get("width", size[1])
            processed.append({"instances": detector_postprocess(result, height, width)})
        return processed


@META_ARCH_REGISTRY.register()
class ProposalNetwork(_ImageNormalizer):
    """A backbone and a proposal generator alone (the "RPN" models): returns proposals."""

    @configurable
    def __init__(self, *, backbone: Backbone, proposal_generator: nn.Module, pixel_mean, pixel_std):
        super().__init__()
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self._register_pixel_stats(pixel_mean, pixel_std)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        return {"backbone": backbone, "proposal_generator": build_proposal_generator(cfg, backbone.output_shape()),
                "pixel_mean": cfg.MODEL.PIXEL_MEAN, "pixel_std": cfg.MODEL.PIXEL_STD}

    def forward(self, batched_inputs):
        """Proposal losses in training; [{"proposals": Instances}] per image otherwise."""
        _check_inputs(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        gt_instances = None
        if "instances" in batched_inputs[0]:
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        proposals, losses = self.proposal_generator(images, features, gt_instances)
        if self.training:
            return losses
        processed = []
        for result, inputs, size in zip(proposals, batched_inputs, images.image_sizes):
            height, width = inputs.get("height", size[0]), inputs.get("width", size[1])
            processed.append({"proposals": detector_postprocess(result, height, width)})
        return processed
