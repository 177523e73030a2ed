import pytest
import torch

from detzoo.structures import ImageList


def manual_pad(tensors, height, width, pad_value):
    """Element-by-element reference: each image copied into a pad-filled canvas."""
    lead = tuple(tensors[0].shape[:-2])
    out = torch.full((len(tensors), *lead, height, width), pad_value, dtype=tensors[0].dtype)
    for i, image in enumerate(tensors):
        flat = image.reshape(-1, image.shape[-2], image.shape[-1])
        canvas = out[i].reshape(-1, height, width)
        for c in range(flat.shape[0]):
            for y in range(image.shape[-2]):
                for x in range(image.shape[-1]):
                    canvas[c, y, x] = flat[c, y, x]
    return out


def round_up(value, stride):
    return -(-value // stride) * stride


def images(sizes, channels=(3,), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*channels, h, w, generator=g).to(dtype) for h, w in sizes]


SIZES = [(5, 7), (8, 4), (6, 6)]


@pytest.mark.parametrize("size_divisibility", [0, 1, 4])
@pytest.mark.parametrize("pad_value", [0.0, -1.5])
def test_from_tensors_vs_manual(size_divisibility, pad_value):
    tensors = images(SIZES)
    batch = ImageList.from_tensors(tensors, size_divisibility, pad_value)
    stride = max(size_divisibility, 1)
    height, width = round_up(8, stride), round_up(7, stride)
    assert batch.tensor.shape == (3, 3, height, width) and batch.tensor.is_contiguous()
    assert torch.equal(batch.tensor, manual_pad(tensors, height, width, pad_value))
    assert batch.image_sizes == SIZES and len(batch) == 3
    for i, image in enumerate(tensors):
        assert torch.equal(batch[i], image)


@pytest.mark.parametrize("size_divisibility", [0, 5])
def test_single_image(size_divisibility):
    tensors = images([(6, 9)])
    batch = ImageList.from_tensors(tensors, size_divisibility, pad_value=2.0)
    height, width = (10, 10) if size_divisibility else (6, 9)
    assert torch.equal(batch.tensor, manual_pad(tensors, height, width, 2.0))


def test_padding_constraints():
    tensors = images(SIZES)
    square = ImageList.from_tensors(tensors, padding_constraints={"square_size": 10})
    assert square.tensor.shape[-2:] == (10, 10)
    assert torch.equal(square.tensor, manual_pad(tensors, 10, 10, 0.0))
    # the dict's size_divisibility overrides the argument
    divisible = ImageList.from_tensors(
        tensors, size_divisibility=32, padding_constraints={"size_divisibility": 3}
    )
    assert divisible.tensor.shape[-2:] == (9, 9)
    both = ImageList.from_tensors(
        tensors, padding_constraints={"square_size": 10, "size_divisibility": 4}
    )
    assert both.tensor.shape[-2:] == (12, 12)
    with pytest.raises(ValueError, match="square_size 7 is smaller than the largest image"):
        ImageList.from_tensors(tensors, padding_constraints={"square_size": 7})


@pytest.mark.parametrize("channels", [(), (2,), (2, 3)])
def test_leading_dimensions(channels):
    tensors = images(SIZES, channels=channels)
    batch = ImageList.from_tensors(tensors)
    assert batch.tensor.shape == (3, *channels, 8, 7)
    assert torch.equal(batch.tensor, manual_pad(tensors, 8, 7, 0.0))
    assert torch.equal(batch[1], tensors[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.uint8])
def test_dtypes(dtype):
    tensors = images(SIZES, dtype=dtype)
    batch = ImageList.from_tensors(tensors, pad_value=1)
    assert batch.tensor.dtype == dtype
    assert torch.equal(batch.tensor, manual_pad(tensors, 8, 7, 1))


def test_non_contiguous_inputs():
    tensors = [t.transpose(-1, -2) for t in images([(7, 5), (4, 8)])]
    assert not tensors[0].is_contiguous()
    batch = ImageList.from_tensors(tensors)
    assert torch.equal(batch.tensor, manual_pad(tensors, 8, 7, 0.0))


def test_gradient_flows_to_images():
    tensors = [t.requires_grad_() for t in images(SIZES)]
    ImageList.from_tensors(tensors, 4).tensor.sum().backward()
    for t in tensors:
        assert torch.equal(t.grad, torch.ones_like(t))


def test_to_and_device():
    batch = ImageList.from_tensors(images(SIZES))
    cast = batch.to(torch.float64)
    assert cast.tensor.dtype == torch.float64 and cast.image_sizes == batch.image_sizes
    assert batch.device == torch.device("cpu")


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least one"):
        ImageList.from_tensors([])
    with pytest.raises(TypeError, match="list or tuple"):
        ImageList.from_tensors(torch.zeros(2, 3, 4, 4))
    with pytest.raises(TypeError, match="element 1 is a list"):
        ImageList.from_tensors([torch.zeros(3, 4, 4), [1, 2]])
    with pytest.raises(ValueError, match=r"element 1 has shape \(1, 4, 4\).*\(3, 4, 4\)"):
        ImageList.from_tensors([torch.zeros(3, 4, 4), torch.zeros(1, 4, 4)])
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        ImageList.from_tensors([torch.zeros(4)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda():
    tensors = images(SIZES)
    batch = ImageList.from_tensors([t.cuda() for t in tensors], 4, 1.0)
    assert batch.device.type == "cuda"
    assert torch.equal(batch.tensor.cpu(), ImageList.from_tensors(tensors, 4, 1.0).tensor)
