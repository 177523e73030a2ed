"""Base of dense (one-stage) detectors: input normalization, per-level prediction layout, and
decoding of per-level predictions into detections."""
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from detzoo.layers import move_device_like
from detzoo.structures import Boxes, ImageList, Instances
from detzoo.utils.events import get_event_storage

from ..postprocessing import detector_postprocess

__all__ = ["DenseDetector", "permute_to_N_HWA_K"]


def permute_to_N_HWA_K(tensor: Tensor, K: int) -> Tensor:
    """(N, A*K, H, W) -> (N, H*W*A, K), the order in which anchors are generated."""
    if not torch.jit.is_scripting() and tensor.dim() != 4:
        raise ValueError(f"expected a 4-D prediction (N, A*K, H, W), got shape {tuple(tensor.shape)}")
    n, _, h, w = tensor.shape
    return tensor.view(n, -1, K, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, K)


class DenseDetector(nn.Module):
    """A backbone plus a fully-convolutional head predicting at every position of every level.
    Subclasses implement `forward_training` and `forward_inference`."""

    def __init__(self, backbone, head: nn.Module, head_in_features: Optional[List[str]] = None, *,
                 pixel_mean, pixel_std):
        """
        Args:
            backbone: a Backbone.
            head: maps the list of head input features to per-level predictions.
            head_in_features: backbone outputs fed to the head (default: all, by stride).
            pixel_mean, pixel_std: per-channel input normalization.
        """
        super().__init__()
        self.backbone = backbone
        self.head = head
        if head_in_features is None:
            shapes = backbone.output_shape()
            head_in_features = sorted(shapes, key=lambda name: shapes[name].stride)
        self.head_in_features = list(head_in_features)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def device(self):
        return self.pixel_mean.device

    def _move_to_current_device(self, x):
        return move_device_like(x, self.pixel_mean)

    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        """Losses in training; [{"instances": Instances}] per image at inference (resized to
        each input's "height"/"width")."""
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        features = [features[f] for f in self.head_in_features]
        predictions = self.head(features)
        if self.training:
            if "instances" not in batched_inputs[0]:
                raise ValueError("training needs 'instances' (ground truth) in every input")
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
            return self.forward_training(images, features, predictions, gt_instances)
        results = self.forward_inference(images, features, predictions)
        if torch.jit.is_scripting():
            # Scripted: the raw detections, at the network input size.
            return results
        processed = []
        for result, inputs, size in zip(results, batched_inputs, images.image_sizes):
            height, width = inputs.get("height", size[0]), inputs.get("width", size[1])
            processed.append({"instances": detector_postprocess(result, height, width)})
        return processed

    def forward_training(self, images, features, predictions, gt_instances):
        raise NotImplementedError(f"{type(self).__name__} must implement forward_training")

    def forward_inference(self, images, features, predictions):
        raise NotImplementedError(f"{type(self).__name__} must implement forward_inference")

    def preprocess_image(self, batched_inputs: List[Dict[str, Tensor]]) -> ImageList:
        """Normalize, pad and batch the input images."""
        images = [(self._move_to_current_device(x["image"]) - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]
        return ImageList.from_tensors(images, self.backbone.size_divisibility,
                                      padding_constraints=self.backbone.padding_constraints)

    def _transpose_dense_predictions(self, predictions: List[List[Tensor]], dims_per_anchor: List[int]):
        """Each output's per-level (N, A*K, Hi, Wi) tensors -> (N, Hi*Wi*A, K)."""
        if not torch.jit.is_scripting() and len(predictions) != len(dims_per_anchor):
            raise ValueError(f"{len(predictions)} prediction kinds but {len(dims_per_anchor)} dims")
        return [[permute_to_N_HWA_K(x, k) for x in per_level] for per_level, k in zip(predictions, dims_per_anchor)]

    def _ema_update(self, name: str, value: float, initial_value: float, momentum: float = 0.9):
        """Exponential moving average kept as attribute `name` (e.g. the foreground count the
        losses are normalized by, which is noisy with one image per GPU)."""
        new = getattr(self, name, initial_value) * momentum + value * (1 - momentum)
        setattr(self, name, new)
        return new

    def _decode_per_level_predictions(self, anchors: Boxes, pred_scores: Tensor, pred_deltas: Tensor,
                                      score_thresh: float, topk_candidates: int, image_size: Tuple[int, int]):
        """One level: keep (anchor, class) pairs above `score_thresh`, then the
        `topk_candidates` best, and decode their boxes.

        Args:
            anchors: Boxes (H*W*A, 4); pred_scores (H*W*A, K) probabilities; pred_deltas (H*W*A, 4).
        Returns:
            Instances with pred_boxes, scores, pred_classes.
        """
        above = pred_scores > score_thresh
        scores = pred_scores[above]
        pairs = torch.nonzero(above)
        num_kept = pairs.shape[0]
        if isinstance(num_kept, Tensor):  # a traced size: min() would freeze it into the graph
            num_kept = torch.clamp(num_kept, max=topk_candidates)
        else:
            num_kept = min(num_kept, topk_candidates)
        scores, order = scores.topk(num_kept)
        anchor_idx, class_idx = pairs[order].unbind(dim=1)
        boxes = self.box2box_transform.apply_deltas(pred_deltas[anchor_idx], anchors.tensor[anchor_idx])
        # Fields set one by one: a scripted Instances takes no keyword arguments.
        detections = Instances(image_size)
        detections.pred_boxes = Boxes(boxes)
        detections.scores = scores
        detections.pred_classes = class_idx
        return detections

    def _decode_multi_level_predictions(self, anchors: List[Boxes], pred_scores: List[Tensor],
                                        pred_deltas: List[Tensor], score_thresh: float, topk_candidates: int,
                                        image_size: Tuple[int, int]):
        """`_decode_per_level_predictions` on every level, concatenated."""
        per_level = [self._decode_per_level_predictions(a, s, d, score_thresh, topk_candidates, image_size)
                     for s, d, a in zip(pred_scores, pred_deltas, anchors)]
        # Called on an element: in TorchScript `Instances` is a class whose `cat` is a method.
        return per_level[0].cat(per_level)

    def visualize_training(self, batched_inputs, results):
        """Put the first image with its GT boxes above its 20 best detections into the storage."""
        from detzoo.utils.visualizer import Visualizer, convert_image_to_rgb

        image = convert_image_to_rgb(batched_inputs[0]["image"].permute(1, 2, 0), self.input_format)
        with_gt = Visualizer(image, None).overlay_instances(boxes=batched_inputs[0]["instances"].gt_boxes).get_image()
        detections = detector_postprocess(results[0], image.shape[0], image.shape[1])
        boxes = detections.pred_boxes.tensor.detach().cpu().numpy()[:20]
        with_pred = Visualizer(image, None).overlay_instances(boxes=boxes).get_image()
        picture = np.vstack((with_gt, with_pred)).transpose(2, 0, 1)
        get_event_storage().put_image("Top: GT bounding boxes; Bottom: 20 Highest Scoring Results", picture)
