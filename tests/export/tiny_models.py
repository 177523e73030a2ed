"""Small, randomly initialized Mask R-CNN and RetinaNet (the shapes quick configs, shrunk)
that produce many detections, for the export and analysis tests."""
import os

import torch

from detzoo.config import get_cfg
from detzoo.modeling import build_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICK = os.path.join(REPO, "configs", "quick_schedules", "detzoo")

# Narrow everything: the tests need the full inference path, not capacity.
_SHRINK = [
    "MODEL.DEVICE", "cpu",
    "MODEL.RESNETS.DEPTH", 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 32,
    "MODEL.RESNETS.STEM_OUT_CHANNELS", 32,
    "MODEL.FPN.OUT_CHANNELS", 32,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 300,
    "MODEL.RPN.POST_NMS_TOPK_TEST", 100,
    "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
    "MODEL.ROI_MASK_HEAD.CONV_DIM", 32,
    "MODEL.RETINANET.NUM_CONVS", 2,
    "MODEL.RETINANET.TOPK_CANDIDATES_TEST", 300,
    "TEST.DETECTIONS_PER_IMAGE", 50,
    # Threshold 0: every candidate survives scoring, so the exports are compared on many boxes.
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
    "MODEL.RETINANET.SCORE_THRESH_TEST", 0.0,
]

IMAGE_SIZE = (128, 160)  # (H, W), both multiples of 32 (the FPN's size divisibility)


def tiny_cfg(name):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(QUICK, name))
    cfg.merge_from_list(_SHRINK)
    return cfg


def _spread_retinanet_scores(model, generator):
    # RetinaNet's head starts with std 0.01 weights: random-init scores all sit near the prior
    # 0.01 and tie to 7 digits, and tied candidates may be ordered differently by ONNX Runtime.
    # Wider head weights make every score distinct.
    for conv in (model.head.cls_score, model.head.bbox_pred):
        conv.weight.data.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.05)


def tiny_model(kind):
    """An eval-mode "mask_rcnn" or "retinanet" with fixed random weights."""
    cfg = tiny_cfg({"mask_rcnn": "mask_rcnn_R_50_FPN_shapes.yaml", "retinanet": "retinanet_R_50_FPN_shapes.yaml"}[kind])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if kind == "retinanet":
        _spread_retinanet_scores(model, torch.Generator().manual_seed(0))
    return model


def random_image(seed, size=IMAGE_SIZE):
    """A (3, H, W) float image of 0-255 values."""
    return torch.rand((3,) + tuple(size), generator=torch.Generator().manual_seed(seed)) * 255
