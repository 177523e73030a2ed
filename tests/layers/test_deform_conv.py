"""Deformable convolution v1 / v2 against torchvision.ops.deform_conv2d (forward and every
gradient), float64 gradcheck, plain conv2d for zero offsets, and opcheck."""
import pytest
import torch
import torchvision
from torch.nn import functional as F
from torch.nn.modules.utils import _pair

from detzoo.layers import DeformConv, ModulatedDeformConv, deform_conv, modulated_deform_conv

# name -> (N, C, H, W, C_out, kernel, stride, padding, dilation, groups, offset_groups)
CONFIGS = {
    "plain": (2, 4, 7, 8, 6, 3, 1, 1, 1, 1, 1),
    "groups_and_offset_groups": (2, 8, 9, 8, 4, 3, 1, 1, 1, 2, 4),
    "stride2_dilation2": (2, 6, 11, 10, 6, 3, 2, 2, 2, 3, 2),
    "rectangular": (1, 4, 6, 9, 5, (2, 3), (1, 2), (0, 1), (2, 1), 1, 2),
    "1x1": (3, 4, 5, 5, 2, 1, 1, 0, 1, 1, 2),
}


def _inputs(config, dtype=torch.float64, seed=0, offset_scale=3.0):
    """Random (input, weight, offset, mask, bias) and the call's hyper-parameters for `config`."""
    n, c, h, w, c_out, kernel, stride, padding, dilation, groups, offset_groups = config
    kh, kw = _pair(kernel)
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    out_h = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    g = torch.Generator().manual_seed(seed)
    tensors = (
        torch.randn(n, c, h, w, generator=g, dtype=dtype),
        torch.randn(c_out, c // groups, kh, kw, generator=g, dtype=dtype),
        torch.randn(n, 2 * offset_groups * kh * kw, out_h, out_w, generator=g, dtype=dtype) * offset_scale,
        torch.rand(n, offset_groups * kh * kw, out_h, out_w, generator=g, dtype=dtype),
        torch.randn(c_out, generator=g, dtype=dtype),
    )
    params = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, deformable_groups=offset_groups)
    return tensors, params


def _ours(input, weight, offset, mask, bias, params, modulated):
    if modulated:
        return modulated_deform_conv(input, offset, mask, weight, bias, **params)
    return deform_conv(input, offset, weight, **params)


def _torchvision(input, weight, offset, mask, bias, params, modulated):
    return torchvision.ops.deform_conv2d(
        input, offset, weight, bias if modulated else None, stride=params["stride"], padding=params["padding"],
        dilation=params["dilation"], mask=mask if modulated else None,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("modulated", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_forward_and_backward_match_torchvision(config, modulated, dtype):
    tensors, params = _inputs(config, dtype)
    ours_leaves = [t.clone().requires_grad_() for t in tensors]
    peer_leaves = [t.clone().requires_grad_() for t in tensors]
    ours = _ours(*ours_leaves, params, modulated)
    expected = _torchvision(*peer_leaves, params, modulated)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours, expected, **tol)

    grad_output = torch.randn_like(expected)
    ours.backward(grad_output)
    expected.backward(grad_output)
    names = ["input", "weight", "offset", "mask", "bias"]
    used = 5 if modulated else 3
    for name, mine, peer in zip(names[:used], ours_leaves, peer_leaves):
        torch.testing.assert_close(mine.grad, peer.grad, **tol, msg=lambda m: f"grad of {name}: {m}")
    for name, mine in zip(names[used:], ours_leaves[used:]):
        assert mine.grad is None, f"{name} is unused by v1 but received a gradient"


@pytest.mark.parametrize("with_bias", [False, True])
def test_v2_without_bias_matches_torchvision(with_bias):
    (input, weight, offset, mask, bias), params = _inputs(CONFIGS["groups_and_offset_groups"])
    bias = bias if with_bias else None
    ours = modulated_deform_conv(input, offset, mask, weight, bias, **params)
    expected = torchvision.ops.deform_conv2d(
        input, offset, weight, bias, stride=params["stride"], padding=params["padding"],
        dilation=params["dilation"], mask=mask,
    )
    torch.testing.assert_close(ours, expected)


# Full Jacobians on a tiny layer (groups and offset groups included), over two seeds; the
# strided, dilated layer is checked in fast mode (random projections of the Jacobian).
GRADCHECK_CASES = {
    "tiny_seed0": ((1, 4, 3, 3, 2, 3, 1, 1, 1, 2, 2), 0, False),
    "tiny_seed1": ((1, 4, 3, 3, 2, 3, 1, 1, 1, 2, 2), 1, False),
    "stride2_dilation2": (CONFIGS["stride2_dilation2"], 0, True),
}


@pytest.mark.parametrize("modulated", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("case", GRADCHECK_CASES.values(), ids=GRADCHECK_CASES.keys())
def test_gradcheck(case, modulated):
    config, seed, fast_mode = case
    tensors, params = _inputs(config, torch.float64, seed=seed, offset_scale=1.5)
    used = 5 if modulated else 3
    leaves = [t.requires_grad_(i < used) for i, t in enumerate(tensors)]

    def fn(*args):
        return _ours(*args, params, modulated)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=fast_mode)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_zero_offsets_and_unit_mask_equal_conv2d(config):
    (input, weight, offset, mask, bias), params = _inputs(config)
    offset, mask = torch.zeros_like(offset), torch.ones_like(mask)
    expected = F.conv2d(input, weight, bias, params["stride"], params["padding"], params["dilation"], params["groups"])
    torch.testing.assert_close(modulated_deform_conv(input, offset, mask, weight, bias, **params), expected)
    torch.testing.assert_close(deform_conv(input, offset, weight, **params), expected - bias.view(1, -1, 1, 1))


def test_gradients_at_zero_offsets_match_torchvision():
    # With padding, zero offsets put samples exactly on the edge y = -1 or x = -1, where the
    # value is 0 but the (one-sided) derivative with respect to the offset is not.
    tensors, params = _inputs(CONFIGS["stride2_dilation2"])
    tensors = (tensors[0], tensors[1], torch.zeros_like(tensors[2]), tensors[3], tensors[4])
    ours_leaves = [t.clone().requires_grad_() for t in tensors]
    peer_leaves = [t.clone().requires_grad_() for t in tensors]
    grad_output = torch.randn(2, 6, 6, 5, dtype=torch.float64)
    _ours(*ours_leaves, params, True).backward(grad_output)
    _torchvision(*peer_leaves, params, True).backward(grad_output)
    assert peer_leaves[2].grad.abs().sum() > 0
    for mine, peer in zip(ours_leaves, peer_leaves):
        torch.testing.assert_close(mine.grad, peer.grad)


def test_multiple_image_chunks():
    # 32 channels * 9 taps * 176 * 176 positions exceed half of the 2^24-element column budget,
    # so each image is its own im2col chunk. The forward is checked against torchvision; the
    # gradients against each image run alone (one chunk, as in the small-batch tests above),
    # which torchvision's backward would take seconds to provide.
    config = (2, 32, 176, 176, 2, 3, 1, 1, 1, 1, 1)
    tensors, params = _inputs(config, torch.float32, offset_scale=1.0)
    leaves = [t.clone().requires_grad_() for t in tensors]
    out = _ours(*leaves, params, True)
    torch.testing.assert_close(out, _torchvision(*tensors, params, True), rtol=1e-4, atol=1e-4)
    grad_output = torch.randn_like(out)
    out.backward(grad_output)
    input, weight, offset, mask, bias = tensors
    expected_weight_grad = torch.zeros_like(weight)
    for i in range(config[0]):
        alone = [input[i : i + 1], weight, offset[i : i + 1], mask[i : i + 1], bias]
        alone = [t.clone().requires_grad_() for t in alone]
        _ours(*alone, params, True).backward(grad_output[i : i + 1])
        for batched, single in zip([leaves[0], leaves[2], leaves[3]], [alone[0], alone[2], alone[3]]):
            torch.testing.assert_close(batched.grad[i : i + 1], single.grad)
        expected_weight_grad += alone[1].grad
    torch.testing.assert_close(leaves[1].grad, expected_weight_grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(leaves[4].grad, grad_output.sum((0, 2, 3)))


@pytest.mark.parametrize("modulated", [False, True], ids=["v1", "v2"])
def test_opcheck(modulated):
    (input, weight, offset, mask, bias), params = _inputs(CONFIGS["stride2_dilation2"])
    nothing = input.new_empty(0)
    args = (
        input.requires_grad_(), weight.requires_grad_(), offset.requires_grad_(),
        mask.requires_grad_() if modulated else nothing, bias.requires_grad_() if modulated else nothing,
        2, 2, 2, 2, 2, 2, params["groups"], params["deformable_groups"], modulated,
    )
    torch.library.opcheck(torch.ops.detzoo.deform_conv.default, args)


@pytest.mark.parametrize("modulated", [False, True], ids=["v1", "v2"])
def test_empty_batch(modulated):
    tensors, params = _inputs(CONFIGS["stride2_dilation2"])
    leaves = [t[:0].clone().requires_grad_() for t in tensors[:1]] + [tensors[1].clone().requires_grad_()]
    leaves += [t[:0].clone().requires_grad_() for t in tensors[2:4]] + [tensors[4].clone().requires_grad_()]
    out = _ours(*leaves, params, modulated)
    assert out.shape == (0, 6, 6, 5)
    out.sum().backward()
    used = 5 if modulated else 3
    for leaf in leaves[:used]:
        assert leaf.grad is not None and leaf.grad.shape == leaf.shape
        assert not leaf.grad.any()


def test_non_contiguous_inputs():
    (input, weight, offset, mask, bias), params = _inputs(CONFIGS["groups_and_offset_groups"])
    expected = modulated_deform_conv(input, offset, mask, weight, bias, **params)
    strided = (
        input.transpose(2, 3).contiguous().transpose(2, 3),
        offset.to(memory_format=torch.channels_last),
        mask.to(memory_format=torch.channels_last),
        weight.to(memory_format=torch.channels_last),
        torch.stack([bias, bias], dim=1)[:, 0],
    )
    assert not any(t.is_contiguous() for t in strided)
    s_input, s_offset, s_mask, s_weight, s_bias = strided
    torch.testing.assert_close(modulated_deform_conv(s_input, s_offset, s_mask, s_weight, s_bias, **params), expected)
    leaves = [t.detach().requires_grad_() for t in strided]
    out = modulated_deform_conv(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], **params)
    out.backward(torch.ones_like(out).transpose(2, 3).contiguous().transpose(2, 3))
    contiguous_leaves = [t.detach().clone().requires_grad_() for t in (input, offset, mask, weight, bias)]
    modulated_deform_conv(*contiguous_leaves, **params).sum().backward()
    for strided_leaf, leaf in zip(leaves, contiguous_leaves):
        torch.testing.assert_close(strided_leaf.grad, leaf.grad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_computes_in_float(dtype):
    tensors, params = _inputs(CONFIGS["plain"], torch.float32, offset_scale=1.0)
    low = [t.to(dtype) for t in tensors]
    expected = _ours(*[t.float() for t in low], params, True)
    out = _ours(*low, params, True)
    assert out.dtype == dtype
    torch.testing.assert_close(out, expected.to(dtype))
    leaves = [t.clone().requires_grad_() for t in low]
    _ours(*leaves, params, True).sum().backward()
    assert all(leaf.grad.dtype == dtype for leaf in leaves)


def test_bad_inputs_name_the_argument():
    (input, weight, offset, mask, bias), params = _inputs(CONFIGS["plain"])
    with pytest.raises(ValueError, match=r"offset must have shape .* = \(2, 18, 7, 8\), got \(2, 16, 7, 8\)"):
        deform_conv(input, offset[:, :16], weight, **params)
    with pytest.raises(ValueError, match=r"mask must have shape .* = \(2, 9, 7, 8\), got \(2, 8, 7, 8\)"):
        modulated_deform_conv(input, offset, mask[:, :8], weight, bias, **params)
    with pytest.raises(ValueError, match=r"offset must be on the device of input \(cpu\), got meta"):
        deform_conv(input, offset.to("meta"), weight, **params)
    with pytest.raises(ValueError, match=r"input must be a 4-D \(N, C, H, W\) tensor, got shape \(4, 7, 8\)"):
        deform_conv(input[0], offset, weight, **params)
    with pytest.raises(ValueError, match=r"weight must have shape \(C_out, C / groups, kh, kw\)"):
        deform_conv(input, offset, weight[:, :3], **params)
    with pytest.raises(ValueError, match=r"bias must have the dtype of input"):
        modulated_deform_conv(input, offset, mask, weight, bias.float(), **params)
    with pytest.raises(ValueError, match=r"too small"):
        deform_conv(input[:, :, :1, :1], offset, weight, **{**params, "padding": 0})
    with pytest.raises(ValueError, match=r"stride must be an int >= 1"):
        deform_conv(input, offset, weight, **{**params, "stride": 0})
    with pytest.raises(TypeError, match=r"offset must be a Tensor"):
        deform_conv(input, offset.tolist(), weight, **params)


def test_direct_op_call_checks_shapes():
    (input, weight, offset, mask, bias), _ = _inputs(CONFIGS["plain"])
    with pytest.raises(RuntimeError, match=r"offset must have shape \(2, 18, 7, 8\)"):
        torch.ops.detzoo.deform_conv(input, weight, offset[:, :4], mask, bias, 1, 1, 1, 1, 1, 1, 1, 1, True)


def test_modules_follow_detectron2():
    conv = DeformConv(4, 6, 3, padding=1, deformable_groups=2, norm=torch.nn.BatchNorm2d(6), activation=torch.relu)
    assert list(conv.state_dict()) == [
        "weight", "norm.weight", "norm.bias", "norm.running_mean", "norm.running_var", "norm.num_batches_tracked"
    ]
    assert conv.bias is None and conv.weight.shape == (6, 4, 3, 3)
    assert conv.extra_repr() == (
        "in_channels=4, out_channels=6, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), "
        "dilation=(1, 1), groups=1, deformable_groups=2, bias=False"
    )
    assert "(norm): BatchNorm2d" in repr(conv)
    conv.eval()
    (input, _, offset, mask, _), _ = _inputs((2, 4, 7, 8, 6, 3, 1, 1, 1, 1, 2))
    input, offset, mask = input.float(), offset.float(), mask.float()
    expected = torch.relu(conv.norm(deform_conv(input, offset, conv.weight, 1, 1, 1, 1, 2)))
    torch.testing.assert_close(conv(input, offset), expected)
    with pytest.raises(ValueError, match="no bias"):
        DeformConv(4, 6, 3, bias=True)
    with pytest.raises(ValueError, match="divisible by groups"):
        DeformConv(4, 6, 3, groups=4)

    modulated = ModulatedDeformConv(4, 6, 3, padding=1, deformable_groups=2)
    assert list(modulated.state_dict()) == ["weight", "bias"]
    assert not modulated.bias.any()
    assert "stride=1, padding=1, dilation=1, groups=1, deformable_groups=2, bias=True" in repr(modulated)
    torch.testing.assert_close(
        modulated(input, offset, mask),
        modulated_deform_conv(input, offset, mask, modulated.weight, modulated.bias, 1, 1, 1, 1, 2),
    )
    assert list(ModulatedDeformConv(4, 6, 3, bias=False).state_dict()) == ["weight"]


def test_module_empty_input_skips_norm():
    conv = DeformConv(4, 6, 3, padding=1, norm=torch.nn.GroupNorm(2, 6))
    out = conv(torch.zeros(0, 4, 7, 8), torch.zeros(0, 18, 7, 8))
    assert out.shape == (0, 6, 7, 8)
