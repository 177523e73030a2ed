"""Mask R-CNN R50-FPN training step and inference: detzoo against torchvision
(`python tools/benchmark.py --task train [--size 800x1216] [--repeat 3] [--threads 2]`).

detzoo's model comes from configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml,
torchvision's is `MaskRCNN` over `resnet_fpn_backbone("resnet50")`; both are randomly
initialised with the same recipe (tools/bench/zoo.py): FrozenBN everywhere in the ResNet,
its statistics calibrated on the benchmark image so activations have a trained network's
scale (identity statistics let them grow to ~1e3 and leave the RPN with 2 proposals).

The settings that differ between the two libraries' defaults are aligned explicitly (the run
prints them): torchvision's ResNet strides in the 3x3 convolution, so detzoo runs with
RESNETS.STRIDE_IN_1X1 False; torchvision keeps 2000 proposals per image after NMS in
training, Detectron2 1000; torchvision's poolers sample 2x2 points per bin, Detectron2's an
adaptive count (sampling ratio 0); `maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)`
would use trainable BatchNorm and train all layers, so the backbone is built with FrozenBN and
3 trainable stages (Detectron2's FREEZE_AT 2).

Both see the same 2 images (same pixels: BGR 0-255 for detzoo, RGB 0-1 for torchvision), the
same 8 boxes, classes (detzoo 0-79, torchvision 1-80) and bit masks per image, and run the same
step: forward, backward, SGD (momentum 0.9, weight decay 1e-4, learning rate 1e-6 so every
timed iteration sees the same weights). torchvision's transform resizes at scale 1 (its
min_size / max_size are set to the image size), which still runs one interpolation per image
and mask. Inference uses a score threshold of 0 in both, so that each returns 100 detections
(random classifiers score every class near 1/81, under the usual 0.05). Warm-up 1, median of
--repeat.
"""
import importlib.util
import os
import sys
from typing import Dict, List, Tuple

import torch
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

from detzoo.utils.events import EventStorage

CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
DEFAULT_SIZE = (800, 1216)  # a typical COCO training shape (800 short side, padded to /32)
TRAINABLE_STAGES = 3  # res3-res5 (layer2-layer4): Detectron2's FREEZE_AT 2


def _zoo():
    """tools/bench/zoo.py, loaded once (the bench modules are files, not a package)."""
    if "bench_zoo" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_zoo", os.path.join(os.path.dirname(__file__), "zoo.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_zoo"] = module
        spec.loader.exec_module(module)
    return sys.modules["bench_zoo"]


def parse_size(text) -> Tuple[int, int]:
    """"800x1216" -> (800, 1216) (height, width); None -> DEFAULT_SIZE."""
    if text is None:
        return DEFAULT_SIZE
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must be HEIGHTxWIDTH such as 800x1216, got {text!r}") from None
    if height < 32 or width < 32:
        raise ValueError(f"--size {text!r}: both sides must be at least 32 pixels")
    return height, width


# ----------------------------------------------------------------------------- models
def detzoo_cfg(config: str = CONFIG):
    cfg = _zoo().load_cfg(config)
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False  # torchvision's ResNet strides in the 3x3 conv
    cfg.INPUT.MASK_FORMAT = "bitmask"  # torchvision takes bit masks
    # Random classifiers score every class near 1/81, under the usual 0.05, so at that
    # threshold each library keeps a different handful of boxes (0 to 20). With 0 both keep
    # the full DETECTIONS_PER_IMAGE and run the mask head and pasting on 100 boxes, like a
    # trained model on a COCO image.
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    return cfg


def torchvision_mask_rcnn(cfg, size: Tuple[int, int]) -> MaskRCNN:
    """torchvision's Mask R-CNN R50-FPN with the RPN / ROI settings of `cfg`, resizing
    (height, width) images at scale 1."""
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d,
                                   trainable_layers=TRAINABLE_STAGES)
    rpn, heads = cfg.MODEL.RPN, cfg.MODEL.ROI_HEADS
    levels = ["0", "1", "2", "3"]
    return MaskRCNN(
        backbone, num_classes=heads.NUM_CLASSES + 1, min_size=min(size), max_size=max(size),
        rpn_pre_nms_top_n_train=rpn.PRE_NMS_TOPK_TRAIN, rpn_pre_nms_top_n_test=rpn.PRE_NMS_TOPK_TEST,
        rpn_post_nms_top_n_train=rpn.POST_NMS_TOPK_TRAIN, rpn_post_nms_top_n_test=rpn.POST_NMS_TOPK_TEST,
        rpn_nms_thresh=rpn.NMS_THRESH, rpn_batch_size_per_image=rpn.BATCH_SIZE_PER_IMAGE,
        rpn_positive_fraction=rpn.POSITIVE_FRACTION,
        box_roi_pool=MultiScaleRoIAlign(levels, cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION,
                                        cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO),
        mask_roi_pool=MultiScaleRoIAlign(levels, cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION,
                                         cfg.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO),
        box_score_thresh=heads.SCORE_THRESH_TEST, box_nms_thresh=heads.NMS_THRESH_TEST,
        box_detections_per_img=cfg.TEST.DETECTIONS_PER_IMAGE, box_batch_size_per_image=heads.BATCH_SIZE_PER_IMAGE,
        box_positive_fraction=heads.POSITIVE_FRACTION)


def alignment_notes(cfg) -> List[str]:
    rpn = cfg.MODEL.RPN
    return [
        f"detzoo: {CONFIG} with RESNETS.STRIDE_IN_1X1 False (torchvision's stride placement), bit masks",
        f"torchvision: MaskRCNN(resnet_fpn_backbone('resnet50', FrozenBatchNorm2d, trainable_layers={TRAINABLE_STAGES})),"
        f" num_classes {cfg.MODEL.ROI_HEADS.NUM_CLASSES + 1} (80 + background)",
        f"RPN top-k per level before NMS {rpn.PRE_NMS_TOPK_TRAIN} train / {rpn.PRE_NMS_TOPK_TEST} test, per image after "
        f"NMS {rpn.POST_NMS_TOPK_TRAIN} / {rpn.POST_NMS_TOPK_TEST} in both (torchvision's default after NMS in training: 2000)",
        f"ROI sampling {cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE} per image, {cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION:.0%} "
        f"positive; poolers 7x7 box / 14x14 mask, sampling ratio 0 in both (torchvision's default: 2)",
        f"inference: score threshold {cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST} (random classifiers score ~1/81), at most "
        f"{cfg.TEST.DETECTIONS_PER_IMAGE} detections, masks pasted at full image size in both",
    ]


# ----------------------------------------------------------------------------- inputs
def torchvision_inputs(scenes, training: bool):
    """(images, targets): RGB float images in [0, 1] and, in training, target dicts with
    boxes (XYXY_ABS), labels (1-based) and uint8 masks."""
    images = [scene.image.flip(0).float() / 255 for scene in scenes]
    if not training:
        return images, None
    targets = [{"boxes": scene.boxes.clone(), "labels": scene.classes + 1, "masks": scene.masks.to(torch.uint8)}
               for scene in scenes]
    return images, targets


# ----------------------------------------------------------------------------- timing
def benchmark(size: Tuple[int, int] = DEFAULT_SIZE, repeat: int = 3, inference_repeat: int = 3) -> Dict:
    """Times of both libraries; {"train_ms": {"detzoo", "torchvision"}, "inference_ms": {...},
    "losses": {...}, "detections": {...}, "notes": [...]}."""
    zoo = _zoo()
    cfg = detzoo_cfg()
    scenes = zoo.scenes_for(cfg, size, zoo.IMAGES_PER_BATCH)
    dz_test = zoo.detzoo_inputs(cfg, scenes[:1], training=False)
    dz_train = zoo.detzoo_inputs(cfg, scenes, training=True)
    tv_test_images, _ = torchvision_inputs(scenes[:1], training=False)
    tv_images, tv_targets = torchvision_inputs(scenes, training=True)

    detzoo_model = zoo.build_random_model(cfg, calibration_inputs=dz_test)
    torch.manual_seed(0)
    tv_model = torchvision_mask_rcnn(cfg, size)
    zoo.set_frozen_bn_to_identity(tv_model)
    zoo.calibrate_batch_norms(tv_model, lambda: tv_model(tv_test_images))

    result = {"notes": alignment_notes(cfg), "train_ms": {}, "inference_ms": {}, "losses": {}, "detections": {}}
    detzoo_model.eval()
    tv_model.eval()
    with torch.inference_mode():
        result["detections"]["detzoo"] = len(detzoo_model(dz_test)[0]["instances"])
        result["detections"]["torchvision"] = len(tv_model(tv_test_images)[0]["boxes"])
    result["inference_ms"]["detzoo"] = 1e3 * zoo.median_time(zoo.inference_step(detzoo_model, dz_test), inference_repeat)
    result["inference_ms"]["torchvision"] = 1e3 * zoo.median_time(zoo.inference_step(tv_model, tv_test_images),
                                                                   inference_repeat)

    detzoo_model.train()
    tv_model.train()
    with EventStorage(0):
        dz_step = zoo.train_step(detzoo_model, zoo.sgd(detzoo_model), dz_train, "detzoo")
        result["train_ms"]["detzoo"] = 1e3 * zoo.median_time(dz_step, repeat)
        result["losses"]["detzoo"] = dz_step()
    tv_step = zoo.train_step(_CallWith(tv_model, tv_targets), zoo.sgd(tv_model), tv_images, "torchvision")
    result["train_ms"]["torchvision"] = 1e3 * zoo.median_time(tv_step, repeat)
    result["losses"]["torchvision"] = tv_step()
    return result


class _CallWith:
    """model(images) -> model(images, targets): lets zoo.train_step drive torchvision."""

    def __init__(self, model, targets):
        self.model, self.targets = model, targets

    def __call__(self, images):
        return self.model(images, self.targets)


def run(args) -> int:
    size = parse_size(getattr(args, "size", None))
    repeat = max(getattr(args, "repeat", 3), 1)
    print(f"cores busy before the run: {_zoo().busy_cores():.2f} (other processes; above ~0.2 the times are "
          "inflated)", flush=True)
    result = benchmark(size, repeat, repeat)
    for note in result["notes"]:
        print("  " + note)
    for key, what in (("train_ms", f"train step, batch of 2 images {size[0]}x{size[1]}"),
                      ("inference_ms", f"inference, 1 image {size[0]}x{size[1]}")):
        ours, peer = result[key]["detzoo"], result[key]["torchvision"]
        unit = "ms/iter" if key == "train_ms" else "ms/image"
        print(f"{what:<44s} detzoo {ours:10.1f} {unit}   torchvision {peer:10.1f} {unit}   "
              f"ratio {peer / ours:5.2f}x (> 1: detzoo faster)", flush=True)
    print(f"detections on the inference image: detzoo {result['detections']['detzoo']}, "
          f"torchvision {result['detections']['torchvision']}")
    for name, losses in result["losses"].items():
        print(f"{name} losses: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(losses.items())))
    return 0
