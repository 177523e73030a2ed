"""NMS against torchvision on boxes shaped like a detector's output in a 1333 x 800 image.

* nms: 10k boxes jittered around 150 objects (RPN-like proposals), thresholds 0.7 (RPN) and
  0.5 (box head).
* batched_nms: the box head's view (Detectron2's fast_rcnn_inference): 1000 proposals around
  100 objects, each scored for 10 of the 80 classes, a class-specific box each -> 10k boxes.
  torchvision loops over the classes there (it does so above 4000 boxes on CPU).
Scores are uniform random, so kept boxes are spread over the score order.
"""
import torch
import torchvision

from detzoo.layers import batched_nms, nms

IMAGE_W, IMAGE_H = 1333.0, 800.0
NUM_BOXES = 10_000
NUM_CLASSES = 80


def _jittered(centres, sizes, which, jitter, generator):
    noise = torch.randn(len(which), 4, generator=generator) * jitter
    centre = centres[which] + noise[:, :2] * sizes[which]
    size = sizes[which] * (1 + noise[:, 2:]).clamp(min=0.3)
    return torch.cat([centre - size / 2, centre + size / 2], 1)


def _objects(num, generator):
    centres = torch.rand(num, 2, generator=generator) * torch.tensor([IMAGE_W, IMAGE_H])
    sizes = 16 + torch.rand(num, 2, generator=generator) ** 2 * 400
    return centres, sizes


def proposals(num_boxes, num_objects, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres, sizes = _objects(num_objects, g)
    boxes = _jittered(centres, sizes, torch.randint(0, num_objects, (num_boxes,), generator=g), 0.12, g)
    return boxes, torch.rand(num_boxes, generator=g)


def class_boxes(num_proposals, classes_per_proposal, num_objects, seed=0):
    g = torch.Generator().manual_seed(seed)
    props, _ = proposals(num_proposals, num_objects, seed)
    centres, sizes = (props[:, :2] + props[:, 2:]) / 2, props[:, 2:] - props[:, :2]
    which = torch.arange(num_proposals).repeat_interleave(classes_per_proposal)
    boxes = _jittered(centres, sizes, which, 0.04, g)
    classes = torch.stack([torch.randperm(NUM_CLASSES, generator=g)[:classes_per_proposal]
                           for _ in range(num_proposals)]).flatten()
    return boxes, torch.rand(len(boxes), generator=g), classes


def cases(Case):
    boxes, scores = proposals(NUM_BOXES, num_objects=150)
    result = []
    for threshold in (0.7, 0.5):
        result.append(Case(f"nms {NUM_BOXES} clustered boxes, iou {threshold}",
                           lambda t=threshold: nms(boxes, scores, t),
                           lambda t=threshold: torchvision.ops.nms(boxes, scores, t), "torchvision"))
    cls_boxes, cls_scores, classes = class_boxes(NUM_BOXES // 10, 10, num_objects=100)
    result.append(Case(f"batched_nms {len(cls_boxes)} boxes, {NUM_CLASSES} classes, iou 0.5",
                       lambda: batched_nms(cls_boxes, cls_scores, classes, 0.5),
                       lambda: torchvision.ops.batched_nms(cls_boxes, cls_scores, classes, 0.5), "torchvision"))
    return result
