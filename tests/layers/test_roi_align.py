"""ROIAlign against torchvision.ops.roi_align (the reference Detectron2 itself calls), plus
gradcheck, opcheck and the edge cases: empty, non-contiguous, reduced precision, bad input."""
import pytest
import torch
import torchvision

from detzoo.layers.roi_align import ROIAlign, roi_align


def _features(dtype=torch.float64, n=2, c=3, h=10, w=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=generator, dtype=dtype)


def _rois(spatial_scale, n_images=2, h=10, w=12, count=24, dtype=torch.float64, seed=1):
    """Boxes in image coordinates (feature coordinates / spatial_scale): random ones, many of
    them partly or wholly outside the map, plus a zero-size, an inverted and a whole-map box."""
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(count, 2, generator=generator, dtype=torch.float64) * torch.tensor([w + 6.0, h + 6.0]) - 3
    size = torch.rand(count, 2, generator=generator, dtype=torch.float64) * 9
    boxes = torch.cat([corner, corner + size], dim=1)
    special = torch.tensor(
        [[4.0, 4.0, 4.0, 4.0], [6.0, 5.0, 2.5, 1.5], [0.0, 0.0, float(w), float(h)]], dtype=torch.float64
    )
    boxes = torch.cat([boxes, special]) / spatial_scale
    image = torch.randint(0, n_images, (len(boxes), 1), generator=generator).to(torch.float64)
    return torch.cat([image, boxes], dim=1).to(dtype)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2])
@pytest.mark.parametrize("spatial_scale", [1.0, 0.5, 0.25])
def test_matches_torchvision(aligned, sampling_ratio, spatial_scale):
    features, rois = _features(), _rois(spatial_scale)
    args = ((3, 5), spatial_scale, sampling_ratio, aligned)
    expected = torchvision.ops.roi_align(features, rois, *args)
    torch.testing.assert_close(roi_align(features, rois, *args), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        roi_align(features.float(), rois.float(), *args), expected.float(), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_gradient_matches_torchvision(aligned, sampling_ratio):
    features, rois = _features().requires_grad_(), _rois(0.5)
    args = ((4, 3), 0.5, sampling_ratio, aligned)
    grad_output = torch.randn(len(rois), 3, 4, 3, dtype=torch.float64)
    (ours,) = torch.autograd.grad(roi_align(features, rois, *args), features, grad_output)
    (expected,) = torch.autograd.grad(torchvision.ops.roi_align(features, rois, *args), features, grad_output)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_gradcheck(aligned, seed):
    features = _features(n=2, c=2, h=6, w=7, seed=seed).requires_grad_()
    rois = _rois(1.0, h=6, w=7, count=4, seed=seed + 10)
    fn = lambda x: roi_align(x, rois, (2, 3), 1.0, 0, aligned)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (features,))
    assert torch.autograd.gradgradcheck(fn, (features,))


def test_opcheck():
    features = _features(dtype=torch.float32).requires_grad_()
    rois = _rois(0.5, dtype=torch.float32)
    torch.library.opcheck(torch.ops.detzoo.roi_align.default, (features, rois, 0.5, 3, 4, 2, True))
    grad = torch.randn(len(rois), 3, 3, 4)
    torch.library.opcheck(
        torch.ops.detzoo._roi_align_backward.default, (grad, rois, 0.5, 3, 4, 2, 3, 10, 12, 0, False)
    )


def test_same_result_on_any_thread_count():
    features = _features(dtype=torch.float32, c=16, h=24, w=30)
    rois = _rois(1.0, h=24, w=30, count=61, dtype=torch.float32)
    features.requires_grad_()
    grad_output = torch.randn(64, 16, 7, 7)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            output = roi_align(features, rois, 7, 1.0, 0, True)
            results.append((output, torch.autograd.grad(output, features, grad_output)[0]))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_empty_rois():
    features = _features().requires_grad_()
    rois = torch.zeros(0, 5, dtype=torch.float64)
    output = roi_align(features, rois, (7, 7), 0.5, 0, True)
    assert output.shape == (0, 3, 7, 7)
    output.sum().backward()
    assert torch.equal(features.grad, torch.zeros_like(features))


def test_empty_feature_map():
    features = torch.zeros(1, 3, 0, 5, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0]], dtype=torch.float64)
    output = roi_align(features, rois, 2, 1.0, 0, True)
    assert torch.equal(output, torch.zeros(1, 3, 2, 2, dtype=torch.float64))
    output.sum().backward()
    assert features.grad.shape == features.shape
    assert roi_align(torch.zeros(2, 0, 4, 4), rois.float(), 2).shape == (1, 0, 2, 2)


def test_non_contiguous_inputs():
    features, rois = _features(dtype=torch.float32, c=6), _rois(0.5, dtype=torch.float32)
    expected = roi_align(features[:, ::2].contiguous(), rois, 3, 0.5, 2, True)
    torch.testing.assert_close(roi_align(features[:, ::2], rois, 3, 0.5, 2, True), expected, rtol=0, atol=0)
    channels_last = features[:, ::2].contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(roi_align(channels_last, rois, 3, 0.5, 2, True), expected, rtol=0, atol=0)
    wide_rois = torch.cat([rois, rois], dim=1)[:, :5]
    assert not wide_rois.is_contiguous()
    torch.testing.assert_close(roi_align(features[:, ::2], wide_rois, 3, 0.5, 2, True), expected, rtol=0, atol=0)


def test_non_contiguous_grad():
    features, rois = _features().requires_grad_(), _rois(0.5)
    output = roi_align(features, rois, 3, 0.5, 0, True)
    (from_expanded,) = torch.autograd.grad(output.sum(), features, retain_graph=True)  # stride-0 grad
    (from_dense,) = torch.autograd.grad(output, features, torch.ones_like(output))
    torch.testing.assert_close(from_expanded, from_dense, rtol=0, atol=0)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_reduced_precision_close_to_float32(dtype, tolerance):
    features = _features(dtype=torch.float32)
    # Coordinates on a 0.5 grid below 32 are exact in both half and bfloat16.
    rois = (_rois(1.0, dtype=torch.float32) * 2).round() / 2
    rois[:, 1:] = rois[:, 1:].clamp(-3, 20)
    expected = roi_align(features, rois, 3, 1.0, 0, True)
    output = roi_align(features.to(dtype), rois.to(dtype), 3, 1.0, 0, True)
    assert output.dtype == dtype
    torch.testing.assert_close(output.float(), expected, rtol=tolerance, atol=tolerance)
    low = features.to(dtype).requires_grad_()
    roi_align(low, rois.to(dtype), 3, 1.0, 0, True).sum().backward()
    full = features.clone().requires_grad_()
    roi_align(full, rois, 3, 1.0, 0, True).sum().backward()
    assert low.grad.dtype == dtype
    torch.testing.assert_close(low.grad.float(), full.grad, rtol=tolerance, atol=tolerance)


def test_list_of_boxes_equals_rois_rows():
    features, rois = _features(), _rois(1.0)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    ordered = torch.cat([rois[rois[:, 0] == i] for i in range(2)])
    torch.testing.assert_close(
        roi_align(features, boxes, 2, 1.0, 2, True), roi_align(features, ordered, 2, 1.0, 2, True), rtol=0, atol=0
    )


def test_module():
    features, rois = _features(dtype=torch.float32), _rois(0.5)
    pooler = ROIAlign((3, 4), spatial_scale=0.5, sampling_ratio=0)
    assert pooler.aligned is True
    assert repr(pooler) == "ROIAlign(output_size=(3, 4), spatial_scale=0.5, sampling_ratio=0, aligned=True)"
    # float64 rois are cast to the features' dtype, as Detectron2 does.
    expected = torchvision.ops.roi_align(features, rois.float(), (3, 4), 0.5, 0, True)
    torch.testing.assert_close(pooler(features, rois), expected, rtol=1e-5, atol=1e-5)


def test_torch_compile_traces_the_op():
    features, rois = _features(dtype=torch.float32), _rois(0.5, dtype=torch.float32)
    compiled = torch.compile(lambda x, r: roi_align(x, r, 3, 0.5, 0, True), backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(features, rois), roi_align(features, rois, 3, 0.5, 0, True))


@pytest.mark.parametrize(
    "make_args,name",
    [
        (lambda x, r: (x[0], r, 3), "input"),
        (lambda x, r: (x.long(), r.long(), 3), "input"),
        (lambda x, r: (x, r[:, :4], 3), "rois"),
        (lambda x, r: (x, r[0], 3), "rois"),
        (lambda x, r: (x, r.double(), 3), "rois"),
        (lambda x, r: (x, r.to("meta"), 3), "rois"),
        (lambda x, r: (x, r, 0), "output_size"),
        (lambda x, r: (x, r, (2, 3, 4)), "output_size"),
        (lambda x, r: (x, [r[:, 1:3]], 3), "boxes"),
    ],
)
def test_bad_input_is_named(make_args, name):
    features, rois = _features(dtype=torch.float32), _rois(1.0, dtype=torch.float32)
    with pytest.raises(ValueError, match=name):
        roi_align(*make_args(features, rois))


def test_module_rejects_wrong_columns():
    with pytest.raises(ValueError, match=r"rois must have shape \(R, 5\)"):
        ROIAlign(3, 1.0, 0)(_features(), torch.zeros(2, 4, dtype=torch.float64))


def test_batch_index_out_of_range():
    rois = torch.tensor([[2.0, 0.0, 0.0, 3.0, 3.0]], dtype=torch.float64)
    with pytest.raises(IndexError, match="rois"):
        roi_align(_features(), rois, 2)
