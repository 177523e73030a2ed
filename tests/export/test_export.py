"""Exported Mask R-CNN and RetinaNet (traced TorchScript; ONNX run by ONNX Runtime on CPU)
give the eager model's detections.

The models have fixed random weights and score threshold 0, so they return their full quota
of detections. The exports are traced on one image and compared on another image of the same
size (the traced graph keeps the sample's image size; see tools/export_model.py). Tolerances:
TorchScript replays the same kernels, so it must match exactly; ONNX Runtime's own kernels
(RoiAlign, convolutions) differ by float32 rounding: boxes within 1e-3 px, scores and mask
probabilities within 1e-5 absolute, classes exactly.
"""
import io

import pytest
import torch

from detzoo.export import TracingAdapter, export_onnx, tracing_inference_func
from detzoo.modeling import GeneralizedRCNN

from .tiny_models import random_image, tiny_model

onnxruntime = pytest.importorskip("onnxruntime")

FIELDS = {
    "mask_rcnn": ("pred_boxes", "scores", "pred_classes", "pred_masks"),
    "retinanet": ("pred_boxes", "scores", "pred_classes"),
}
ONNX_ATOL = {"pred_boxes": 1e-3, "scores": 1e-5, "pred_classes": 0, "pred_masks": 1e-5}


def _eager(model, image):
    with torch.no_grad():
        inference = tracing_inference_func(model)
        outputs = inference(model, [{"image": image}]) if inference else model([{"image": image}])
    return outputs[0]["instances"]


def _tensor(value):
    return getattr(value, "tensor", value)


def _compare(expected, actual, kind, atol):
    assert len(expected) == len(actual) > 0
    assert [int(s) for s in actual.image_size] == list(expected.image_size)
    for name in FIELDS[kind]:
        a, b = _tensor(expected.get(name)), _tensor(actual.get(name))
        assert a.shape == b.shape, name
        torch.testing.assert_close(b, a, rtol=0, atol=atol[name], msg=f"{kind}: {name}")


@pytest.fixture(scope="module", params=["mask_rcnn", "retinanet"])
def exported(request):
    kind = request.param
    model = tiny_model(kind)
    adapter = TracingAdapter(model, [{"image": random_image(0)}], tracing_inference_func(model))
    return kind, model, adapter


def test_outputs_schema_fields(exported):
    kind, model, adapter = exported
    with torch.no_grad():
        adapter(*adapter.flattened_inputs)
    instances_schema = adapter.outputs_schema.schemas[0].schemas[0]
    assert sorted(instances_schema.keys) == sorted(FIELDS[kind])
    assert isinstance(model, GeneralizedRCNN) == (kind == "mask_rcnn")


def test_torchscript_tracing(exported):
    kind, model, adapter = exported
    traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    image = random_image(1)
    with torch.no_grad():
        actual = adapter.outputs_schema(loaded(image))[0]["instances"]
    _compare(_eager(model, image), actual, kind, {name: 0 for name in ONNX_ATOL})


def test_onnx(exported):
    kind, model, adapter = exported
    buffer = io.BytesIO()
    export_onnx(adapter, buffer)
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    image = random_image(1)
    outputs = session.run(None, {"image": image.numpy()})
    actual = adapter.outputs_schema([torch.from_numpy(x) for x in outputs])[0]["instances"]
    _compare(_eager(model, image), actual, kind, ONNX_ATOL)


def test_onnx_opset_too_old(exported):
    _, _, adapter = exported
    with pytest.raises(ValueError, match="at least 16"):
        export_onnx(adapter, io.BytesIO(), opset_version=13)
