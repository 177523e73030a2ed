"""Smoke test over every model-zoo config (timm-style): build, eval forward, train forward and
backward at a small image size; losses are finite and every trainable parameter gets a finite
gradient."""
import pytest
import torch

from detzoo.config import get_cfg
from detzoo.modeling import build_model
from detzoo.structures import Boxes, BitMasks, Instances, Keypoints
from detzoo.utils.events import EventStorage

from .zoo_utils import CONFIGS, zoo_configs

H, W = 96, 128

# One config per architecture family runs in `make test`; the other zoo configs (deeper
# backbones and dataset variants of the same code paths) run in `make test-slow`.
FAST = {
    "COCO-Detection/fast_rcnn_R_50_FPN_1x.yaml",
    "COCO-Detection/rpn_R_50_C4_1x.yaml",
    "COCO-Detection/retinanet_R_50_FPN_1x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_1x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x_giou.yaml",
    "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml",
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml",
    "Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml",
    "Misc/mask_rcnn_R_50_FPN_1x_dconv_c3-c5.yaml",
    "Misc/mask_rcnn_R_50_FPN_3x_gn.yaml",
    "Misc/mask_rcnn_R_50_FPN_3x_syncbn.yaml",
    "Misc/semantic_R_50_FPN_1x.yaml",
}


def _params():
    configs = zoo_configs()
    missing = FAST - set(configs)
    if missing:
        raise FileNotFoundError(f"configs listed in FAST do not exist: {sorted(missing)}")
    return [c if c in FAST else pytest.param(c, marks=pytest.mark.slow) for c in configs]


def _cfg(rel_path):
    cfg = get_cfg()
    cfg.merge_from_file(f"{CONFIGS}/{rel_path}")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    # Small inputs and few proposals keep every config under a few seconds on 2 cores.
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 64
    return cfg


def _num_classes(cfg):
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        return cfg.MODEL.RETINANET.NUM_CLASSES
    return cfg.MODEL.ROI_HEADS.NUM_CLASSES


def _inputs(cfg, train):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, H, W, generator=g) * 255
    d = {"image": image, "height": H, "width": W}
    boxes = torch.tensor([[10.0, 12.0, 70.0, 80.0], [40.0, 20.0, 120.0, 60.0]])
    classes = torch.tensor([0, min(1, _num_classes(cfg) - 1)])
    if train:
        inst = Instances((H, W))
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = classes
        if cfg.MODEL.MASK_ON:
            masks = torch.zeros(2, H, W, dtype=torch.bool)
            masks[0, 20:70, 15:60] = True
            masks[1, 25:55, 50:110] = True
            inst.gt_masks = BitMasks(masks)
        if cfg.MODEL.KEYPOINT_ON:
            k = cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS
            xy = torch.stack([torch.linspace(15, 65, k), torch.linspace(15, 75, k)], 1)
            kp = torch.cat([xy, torch.full((k, 1), 2.0)], 1)
            inst.gt_keypoints = Keypoints(torch.stack([kp, kp + torch.tensor([35.0, 5.0, 0.0])]))
        d["instances"] = inst
        if cfg.MODEL.META_ARCHITECTURE in ("SemanticSegmentor", "PanopticFPN"):
            sem = torch.randint(0, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, (H, W), generator=g)
            sem[:5] = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
            d["sem_seg"] = sem
    if cfg.MODEL.PROPOSAL_GENERATOR.NAME == "PrecomputedProposals" and cfg.MODEL.META_ARCHITECTURE != "RetinaNet":
        props = Instances((H, W))
        props.proposal_boxes = Boxes(torch.cat([boxes, boxes + 3, torch.tensor([[0.0, 0.0, 50.0, 40.0]])]))
        props.objectness_logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0])
        d["proposals"] = props
    return [d]


@pytest.mark.parametrize("rel_path", _params())
def test_config_trains_and_infers(rel_path):
    cfg = _cfg(rel_path)
    torch.manual_seed(0)
    model = build_model(cfg)

    model.eval()
    with torch.no_grad():
        outputs = model(_inputs(cfg, train=False))
    assert len(outputs) == 1 and outputs[0], f"{rel_path}: empty output"
    for key, value in outputs[0].items():
        if key == "instances":
            assert torch.isfinite(value.scores).all()
        elif key == "sem_seg":
            assert value.shape[-2:] == (H, W) and torch.isfinite(value).all()

    model.train()
    with EventStorage(0):
        losses = model(_inputs(cfg, train=True))
    assert losses and all(torch.isfinite(v) for v in losses.values()), f"{rel_path}: {losses}"
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"{rel_path}: trainable parameters without gradient: {no_grad[:10]}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"{rel_path}: non-finite gradients in {bad[:10]}"
