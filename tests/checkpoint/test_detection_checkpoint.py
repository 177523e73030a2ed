import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from detzoo.checkpoint import DetectionCheckpointer
from detzoo.checkpoint.c2_model_loading import align_and_update_state_dicts, convert_c2_detectron_names
from detzoo.checkpoint.safe_pickle import load_weights_pickle


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_safe_pickle_reads_arrays_and_refuses_code():
    data = {"model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "__author__": "me"}
    for protocol in (2, 4):
        loaded = load_weights_pickle(pickle.dumps(data, protocol=protocol))
        np.testing.assert_array_equal(loaded["model"]["w"], data["model"]["w"])
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system|nt.system"):
        load_weights_pickle(pickle.dumps({"x": _Evil()}), source="evil.pkl")


def test_c2_names_follow_detectron2_conventions():
    # Name pairs from Detectron1's model zoo and their Detectron2 equivalents.
    pairs = {
        "conv1_w": "stem.conv1.weight",
        "res_conv1_bn_s": "stem.conv1.norm.weight",
        "res2_0_branch1_w": "res2.0.shortcut.weight",
        "res2_0_branch2a_bn_b": "res2.0.conv1.norm.bias",
        "res3_1_branch2b_w": "res3.1.conv2.weight",
        "res4_5_branch2c_bn_s": "res4.5.conv3.norm.weight",
        "fpn_inner_res3_3_sum_lateral_w": "fpn_lateral3.weight",
        "fpn_res4_5_sum_b": "fpn_output4.bias",
        "conv_rpn_fpn2_w": "proposal_generator.rpn_head.conv.weight",
        "rpn_cls_logits_fpn2_b": "proposal_generator.rpn_head.objectness_logits.bias",
        "fc6_w": "box_head.fc1.weight",
        "_[mask]_fcn1_w": "mask_head.mask_fcn1.weight",
        "conv5_mask_w": "mask_head.deconv.weight",
        "kps_score_lowres_w": "roi_heads.keypoint_head.score_lowres.weight",
    }
    weights = {k: torch.zeros(3) for k in pairs}
    renamed, originals = convert_c2_detectron_names(weights)
    assert set(renamed) == set(pairs.values())
    assert {originals[v]: v for v in renamed} == pairs


def test_c2_predictors_drop_background():
    weights = {"cls_score_w": torch.arange(4.0)[:, None].expand(4, 2), "bbox_pred_w": torch.zeros(16, 2),
               "mask_fcn_logits_w": torch.zeros(4, 2, 1, 1)}
    renamed, _ = convert_c2_detectron_names(weights)
    assert renamed["cls_score.weight"][:, 0].tolist() == [1.0, 2.0, 3.0, 0.0]  # background moved last
    assert renamed["bbox_pred.weight"].shape == (12, 2)
    assert renamed["mask_head.predictor.weight"].shape == (3, 2, 1, 1)


def test_align_matches_longest_suffix_and_skips_bad_shapes():
    model = {"backbone.bottom_up.stem.conv1.weight": torch.zeros(2), "backbone.bottom_up.res2.0.conv1.weight":
             torch.zeros(3), "roi_heads.box_head.fc1.weight": torch.zeros(4)}
    ckpt = {"stem.conv1.weight": torch.ones(2), "res2.0.conv1.weight": torch.ones(3),
            "conv1.weight": torch.ones(7), "box_head.fc1.weight": torch.ones(5)}
    out = align_and_update_state_dicts(model, ckpt, c2_conversion=False)
    assert torch.equal(out["backbone.bottom_up.stem.conv1.weight"], torch.ones(2))
    assert torch.equal(out["backbone.bottom_up.res2.0.conv1.weight"], torch.ones(3))
    assert "roi_heads.box_head.fc1.weight" not in out  # shape mismatch: not loaded
    assert "box_head.fc1.weight" in out and "conv1.weight" in out  # unmatched kept (reported as unexpected)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(3, 2)
        self.register_buffer("pixel_mean", torch.zeros(3), False)


def test_loads_detectron2_pkl(tmp_path):
    model = _Tiny()
    weight = np.random.RandomState(0).randn(2, 3).astype(np.float32)
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"body.weight": weight, "body.bias": np.zeros(2, np.float32)}, "__author__": "test"},
                    f, protocol=2)
    incompatible = DetectionCheckpointer(model).load(str(path))
    np.testing.assert_array_equal(model.body.weight.detach().numpy(), weight)
    assert incompatible is not None


def test_save_is_atomic(tmp_path, monkeypatch):
    model = _Tiny()
    ckpt = DetectionCheckpointer(model, save_dir=str(tmp_path))
    ckpt.save("model_0000009")
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000019")
    # The previous checkpoint is still the latest, intact; no partial file remains.
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]
    monkeypatch.undo()
    fresh = _Tiny()
    DetectionCheckpointer(fresh).load(str(tmp_path / "model_0000009.pth"))
    assert torch.equal(fresh.body.weight, model.body.weight)
