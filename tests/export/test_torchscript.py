"""Scripting: the generated `Instances` class (`patch_instances`), `freeze_training_mode`, and
Mask R-CNN / RetinaNet (also Faster, Keypoint and Cascade R-CNN) compiled by `scripting_with_instances`,
which must give exactly the eager detections (same kernels) on images of any size;
tools/export_model.py --export-method scripting."""
import importlib.util
import io
import os

import pytest
import torch
from torch import nn

from detzoo.config import get_cfg
from detzoo.export import (
    DEFAULT_SCRIPTING_FIELDS,
    ScriptableAdapter,
    freeze_training_mode,
    patch_instances,
    scripting_with_instances,
)
from detzoo.modeling import build_model
from detzoo.modeling.postprocessing import detector_postprocess
from detzoo.structures import Boxes, Instances

from .tiny_models import _SHRINK, IMAGE_SIZE, REPO, random_image, tiny_model

FIELDS = {"pred_boxes": Boxes, "scores": torch.Tensor, "pred_classes": torch.Tensor}
OTHER_SIZE = (160, 224)


def _scripted_roundtrip(scripted):
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


# ---- patch_instances


def _use_instances(x: torch.Tensor, keep: torch.Tensor) -> Instances:
    instances = Instances((7, 9))
    instances.pred_boxes = Boxes(x)
    instances.scores = x[:, 0]
    joined = instances.cat([instances, instances])
    if not joined.has("scores") or joined.has("pred_classes"):
        raise RuntimeError("has() is wrong")
    selected = joined[keep]
    selected.pred_classes = torch.arange(len(selected))
    return selected.to(x.device)


def test_patched_instances_compile_and_behave():
    boxes = torch.rand(4, 4)
    keep = torch.tensor([True, False, True, True, False, False, True, True])
    with patch_instances(FIELDS) as scripted_class:
        function = torch.jit.script(_use_instances)
        result = function(boxes, keep)
    assert type(result) is scripted_class
    fields = result.get_fields()
    assert sorted(fields) == ["pred_boxes", "pred_classes", "scores"]
    expected = torch.cat([boxes, boxes])[keep]
    torch.testing.assert_close(fields["pred_boxes"], expected, rtol=0, atol=0)
    torch.testing.assert_close(fields["scores"], expected[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(fields["pred_classes"], torch.arange(5))
    assert tuple(result.image_size) == (7, 9) and len(result) == 5
    # eager Instances is untouched afterwards
    assert "_jit_override_qualname" not in Instances.__dict__
    eager = _use_instances(boxes, keep)
    torch.testing.assert_close(eager.pred_boxes.tensor, expected, rtol=0, atol=0)


def test_patched_instances_missing_field_raises():
    def read_masks(x: torch.Tensor) -> torch.Tensor:
        instances = Instances((2, 2))
        instances.scores = x
        return instances.scores + instances.pred_classes

    with patch_instances(FIELDS):
        function = torch.jit.script(read_masks)
        with pytest.raises(Exception, match="Cannot find field 'pred_classes'"):
            function(torch.ones(3))


@pytest.mark.parametrize("fields", [{}, {"_private": torch.Tensor}, {"scores": "Tensor"}, ["scores"]])
def test_patch_instances_rejects_bad_fields(fields):
    with pytest.raises((ValueError, TypeError)):
        with patch_instances(fields):
            pass


# ---- freeze_training_mode


class _Branches(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.not_scriptable(x)  # unknown method: compiles only if the branch is dropped
        return x + 1


def test_freeze_training_mode_drops_the_other_branch_and_restores():
    model = _Branches().eval()
    with pytest.raises(Exception):
        torch.jit.script(model)
    with freeze_training_mode(model):
        scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(torch.zeros(2)), torch.ones(2))
    assert "__annotations__" not in _Branches.__dict__ or "training" not in _Branches.__dict__["__annotations__"]


def test_scripting_needs_eval_mode():
    with pytest.raises(ValueError, match="eval mode"):
        scripting_with_instances(nn.Linear(2, 2).train(), FIELDS)


# ---- Mask R-CNN and RetinaNet


@pytest.fixture(scope="module", params=["mask_rcnn", "retinanet"])
def scripted(request):
    model = tiny_model(request.param)
    return request.param, model, _scripted_roundtrip(scripting_with_instances(ScriptableAdapter(model),
                                                                              DEFAULT_SCRIPTING_FIELDS))


def _as_instances(fields, image_size):
    instances = Instances(image_size)
    for name, value in fields.items():
        instances.set(name, Boxes(value) if DEFAULT_SCRIPTING_FIELDS[name] is Boxes else value)
    return instances


@pytest.mark.parametrize("size", [IMAGE_SIZE, OTHER_SIZE])
def test_scripted_model_matches_eager(scripted, size):
    kind, model, scripted_model = scripted
    image = random_image(1, size)
    with torch.no_grad():
        actual = _as_instances(scripted_model([{"image": image}])[0], size)
        if kind == "mask_rcnn":
            expected = model.inference([{"image": image}], do_postprocess=False)[0]
        else:
            # Scripted RetinaNet returns raw detections; the eager one clips them to the image.
            expected = model([{"image": image}])[0]["instances"]
            actual = detector_postprocess(actual, *size)
    assert len(actual) == len(expected) > 0
    assert sorted(actual.get_fields()) == sorted(expected.get_fields())
    for name, value in expected.get_fields().items():
        torch.testing.assert_close(getattr(actual.get(name), "tensor", actual.get(name)),
                                   getattr(value, "tensor", value), rtol=0, atol=0, msg=f"{kind}: {name}")


def _tiny_rcnn(config, extra_opts):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", config))
    cfg.merge_from_list(list(_SHRINK) + extra_opts)
    torch.manual_seed(0)
    return build_model(cfg).eval()


@pytest.mark.parametrize(
    "config, extra_opts",
    [
        ("quick_schedules/detzoo/faster_rcnn_R_50_FPN_shapes.yaml", []),
        ("COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml", ["MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS", (32, 32)]),
        ("Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml", []),
    ],
)
def test_other_rcnn_variants_script(config, extra_opts):
    model = _tiny_rcnn(config, extra_opts)
    scripted = scripting_with_instances(ScriptableAdapter(model), DEFAULT_SCRIPTING_FIELDS)
    image = random_image(3, OTHER_SIZE)
    with torch.no_grad():
        actual = scripted([{"image": image}])[0]
        expected = model.inference([{"image": image}], do_postprocess=False)[0]
    assert len(expected) > 0 and sorted(actual) == sorted(expected.get_fields())
    for name, value in expected.get_fields().items():
        torch.testing.assert_close(actual[name], getattr(value, "tensor", value), rtol=0, atol=0, msg=name)


# ---- tools/export_model.py


@pytest.fixture(scope="module")
def export_tool():
    spec = importlib.util.spec_from_file_location("export_model_tool", os.path.join(REPO, "tools", "export_model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CONFIG = os.path.join(REPO, "configs", "quick_schedules", "detzoo", "mask_rcnn_R_50_FPN_shapes.yaml")


def test_tool_scripting_rejects_onnx(export_tool, tmp_path):
    with pytest.raises(SystemExit, match="TorchScript only"):
        export_tool.main(["--config-file", CONFIG, "--output", str(tmp_path), "--export-method", "scripting",
                          "--format", "onnx"])


def test_tool_scripting_writes_a_loadable_model(export_tool, tmp_path):
    export_tool.main(["--config-file", CONFIG, "--output", str(tmp_path), "--export-method", "scripting"]
                     + [str(x) for x in _SHRINK])
    for name in ("model.ts", "model_ts_code.txt", "model_ts_IR.txt"):
        assert (tmp_path / name).is_file(), name
    loaded = torch.jit.load(str(tmp_path / "model.ts"))
    outputs = loaded([{"image": random_image(2, OTHER_SIZE)}])[0]
    assert sorted(outputs) == ["pred_boxes", "pred_classes", "pred_masks", "scores"]
    assert outputs["pred_boxes"].shape[1] == 4 and outputs["pred_masks"].shape[1:] == (1, 28, 28)
