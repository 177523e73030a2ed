"""Exported Mask R-CNN and RetinaNet (traced TorchScript; ONNX run by ONNX Runtime on CPU)
give the eager model's detections, also on images of another size than the traced sample.

The models have fixed random weights and score threshold 0, so they return their full quota
of detections. The exports are traced on a 128 x 160 image and compared on another image of
that size and on a 160 x 224 one: image sizes are read from the input inside the graph.
Tolerances: TorchScript replays the same kernels, so it must match exactly; ONNX Runtime's own
kernels (RoiAlign, convolutions) differ by float32 rounding: boxes within 1e-3 px, scores and
mask probabilities within 1e-5 absolute, classes exactly. Detections of exactly equal score
may come out of ONNX Runtime's TopK / NonMaxSuppression in another order, so ONNX outputs are
matched to the eager ones, not compared row by row.
"""
import io

import pytest
import torch

from detzoo.export import TracingAdapter, export_onnx, tracing_inference_func
from detzoo.modeling import GeneralizedRCNN

from .tiny_models import IMAGE_SIZE, random_image, tiny_model

onnxruntime = pytest.importorskip("onnxruntime")

FIELDS = {
    "mask_rcnn": ("pred_boxes", "scores", "pred_classes", "pred_masks"),
    "retinanet": ("pred_boxes", "scores", "pred_classes"),
}
EXACT = {"pred_boxes": 0, "scores": 0, "pred_classes": 0, "pred_masks": 0}
ONNX_ATOL = {"pred_boxes": 1e-3, "scores": 1e-5, "pred_classes": 0, "pred_masks": 1e-5}
OTHER_SIZE = (160, 224)  # (H, W), larger than IMAGE_SIZE on both sides


def _eager(model, image):
    with torch.no_grad():
        inference = tracing_inference_func(model)
        outputs = inference(model, [{"image": image}]) if inference else model([{"image": image}])
    return outputs[0]["instances"]


def _tensor(value):
    return getattr(value, "tensor", value)


def _check_image_size(expected, actual):
    assert [int(s) for s in actual.image_size] == list(expected.image_size)


def _compare(expected, actual, kind, atol):
    """Row by row."""
    assert len(expected) == len(actual) > 0
    _check_image_size(expected, actual)
    for name in FIELDS[kind]:
        a, b = _tensor(expected.get(name)), _tensor(actual.get(name))
        assert a.shape == b.shape, name
        torch.testing.assert_close(b, a, rtol=0, atol=atol[name], msg=f"{kind}: {name}")


def _close(expected, actual, i, j, kind, atol):
    return all(
        torch.allclose(_tensor(actual.get(name))[j].float(), _tensor(expected.get(name))[i].float(), rtol=0,
                       atol=atol[name])
        for name in FIELDS[kind]
    )


def _compare_as_sets(expected, actual, kind, atol):
    """Each expected detection has its own actual detection within `atol` (greedy matching)."""
    assert len(expected) == len(actual) > 0
    _check_image_size(expected, actual)
    unmatched = list(range(len(actual)))
    for i in range(len(expected)):
        match = next((j for j in unmatched if _close(expected, actual, i, j, kind, atol)), None)
        assert match is not None, f"{kind}: detection {i} of the eager model has no counterpart"
        unmatched.remove(match)


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


@pytest.fixture(scope="module")
def traced(exported):
    """The traced adapter, saved and loaded back."""
    _, _, adapter = exported
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False), buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


@pytest.mark.parametrize("size", [IMAGE_SIZE, OTHER_SIZE])
def test_torchscript_tracing(exported, traced, size):
    kind, model, adapter = exported
    image = random_image(1, size)
    with torch.no_grad():
        actual = adapter.outputs_schema(traced(image))[0]["instances"]
    _compare(_eager(model, image), actual, kind, EXACT)


@pytest.fixture(scope="module")
def onnx_session(exported):
    _, _, adapter = exported
    buffer = io.BytesIO()
    export_onnx(adapter, buffer)
    return onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("size", [IMAGE_SIZE, OTHER_SIZE])
def test_onnx(exported, onnx_session, size):
    kind, model, adapter = exported
    image = random_image(1, size)
    outputs = onnx_session.run(None, {"image": image.numpy()})
    actual = adapter.outputs_schema([torch.from_numpy(x) for x in outputs])[0]["instances"]
    _compare_as_sets(_eager(model, image), actual, kind, ONNX_ATOL)


def test_onnx_opset_too_old(exported):
    _, _, adapter = exported
    with pytest.raises(ValueError, match="at least 16"):
        export_onnx(adapter, io.BytesIO(), opset_version=13)


def _rpn_proposals(model, inputs):
    images = model.preprocess_image(inputs)
    proposals, _ = model.proposal_generator(images, model.backbone(images.tensor))
    return [{"proposals": p} for p in proposals]


def test_traced_rpn_follows_the_image_size():
    """The RPN's per-level top-k and its empty-box filter are recorded for any image size: at
    128 x 160 the coarsest level has fewer anchors than PRE_NMS_TOPK_TEST, at 160 x 224 more."""
    model = tiny_model("mask_rcnn")
    # Keep every proposal that survives NMS, so that a level cut short would show.
    model.proposal_generator.post_nms_topk[False] = 5000
    adapter = TracingAdapter(model, [{"image": random_image(0)}], _rpn_proposals)
    traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    image = random_image(1, OTHER_SIZE)
    with torch.no_grad():
        actual = adapter.outputs_schema(traced(image))[0]["proposals"]
        expected = _rpn_proposals(model, [{"image": image}])[0]["proposals"]
    assert [int(s) for s in actual.image_size] == list(expected.image_size)
    torch.testing.assert_close(actual.proposal_boxes.tensor, expected.proposal_boxes.tensor, rtol=0, atol=0)
    torch.testing.assert_close(actual.objectness_logits, expected.objectness_logits, rtol=0, atol=0)
