import sys

import pytest
import torch

from detzoo.config import get_cfg
from detzoo.modeling import GeneralizedRCNNWithTTA, build_model

from .zoo_utils import CONFIGS, PARITY

sys.path.insert(0, PARITY)
weights = pytest.importorskip("weights", reason="needs ../shared/parity/weights.py")


@pytest.fixture(scope="module")
def cfg_and_model():
    return _model()


def _model():
    cfg = get_cfg()
    cfg.merge_from_file(f"{CONFIGS}/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.TEST.AUG.MIN_SIZES = (96,)
    cfg.TEST.AUG.MAX_SIZE = 1000
    model = build_model(cfg).eval()
    sd = model.state_dict()
    filled = weights.fill({k: tuple(v.shape) for k, v in sd.items()},
                          {k: str(v.dtype).replace("torch.", "") for k, v in sd.items()})
    model.load_state_dict({k: torch.from_numpy(v) for k, v in filled.items()})
    return cfg, model


def _inputs():
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(3, 96, 128, generator=g) * 255, "height": 96, "width": 128}]


def test_single_unflipped_copy_equals_plain_inference(cfg_and_model):
    # With one augmentation (the input size itself, no flip), TTA's merge is NMS over the same
    # detections: it must reproduce the plain model's output.
    cfg, model = cfg_and_model
    cfg = cfg.clone()
    cfg.TEST.AUG.FLIP = False
    with torch.no_grad():
        plain = model(_inputs())[0]["instances"]
        tta = GeneralizedRCNNWithTTA(cfg, model)(_inputs())[0]["instances"]
    assert len(plain) > 0
    order_p, order_t = plain.scores.argsort(descending=True), tta.scores.argsort(descending=True)
    torch.testing.assert_close(tta.pred_boxes.tensor[order_t], plain.pred_boxes.tensor[order_p])
    torch.testing.assert_close(tta.scores[order_t], plain.scores[order_p])
    assert torch.equal(tta.pred_classes[order_t], plain.pred_classes[order_p])
    assert torch.equal(tta.pred_masks[order_t], plain.pred_masks[order_p])


def test_flip_augmentation_runs_and_keeps_boxes_in_image(cfg_and_model):
    cfg, model = cfg_and_model
    cfg = cfg.clone()
    cfg.TEST.AUG.FLIP = True
    with torch.no_grad():
        out = GeneralizedRCNNWithTTA(cfg, model)(_inputs())[0]["instances"]
    boxes = out.pred_boxes.tensor
    assert len(out) > 0 and out.pred_masks.shape[1:] == (96, 128)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 128).all() and (boxes[:, 3] <= 96).all()


def test_rejects_keypoint_models(cfg_and_model):
    cfg, model = cfg_and_model
    cfg = cfg.clone()
    cfg.MODEL.KEYPOINT_ON = True
    with pytest.raises(ValueError, match="keypoint"):
        GeneralizedRCNNWithTTA(cfg, model)
