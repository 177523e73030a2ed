"""`ImageList`: images of different sizes batched into one padded tensor."""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch.nn import functional as F


class ImageList:
    """A batch of images padded to a common size, with each image's own size kept.

    Attributes:
        tensor (Tensor[N, ..., H, W]): the padded batch; image i occupies
            tensor[i, ..., :h_i, :w_i].
        image_sizes (list[tuple[int, int]]): (h_i, w_i) of each image before padding. While
            `torch.jit.trace` runs `from_tensors` they are 0-d tensors, so that the graph reads
            them from its input instead of keeping the sample's sizes.
    """

    def __init__(self, tensor: torch.Tensor, image_sizes: List[Tuple[int, int]]):
        """
        Args:
            tensor (Tensor): (N, H, W) or (N, C_1, ..., C_K, H, W), K >= 1.
            image_sizes (list[tuple[int, int]]): (h, w) of each image, at most (H, W).
        """
        self.tensor = tensor
        self.image_sizes = image_sizes

    def __len__(self) -> int:
        return len(self.image_sizes)

    def __getitem__(self, idx: int) -> torch.Tensor:
        """Image `idx` cropped to its original size: (h, w) or (C_1, ..., C_K, h, w)."""
        height, width = self.image_sizes[idx]
        return self.tensor[idx, ..., :height, :width]

    @torch.jit.unused
    def to(self, *args: Any, **kwargs: Any) -> "ImageList":
        """Same images with the batch tensor moved/cast by `Tensor.to(*args, **kwargs)`."""
        return ImageList(self.tensor.to(*args, **kwargs), self.image_sizes)

    @property
    def device(self):
        """torch.device of the batch (no annotation: TorchScript cannot resolve it here)."""
        return self.tensor.device

    @staticmethod
    def from_tensors(
        tensors: List[torch.Tensor],
        size_divisibility: int = 0,
        pad_value: float = 0.0,
        padding_constraints: Optional[Dict[str, int]] = None,
    ) -> "ImageList":
        """Pad images at the bottom and right to one size and stack them.

        Args:
            tensors (list or tuple of Tensor): each (H_i, W_i) or (C_1, ..., C_K, H_i, W_i);
                all leading dimensions must agree.
            size_divisibility (int): if > 1, the padded height and width are rounded up to a
                multiple of it (e.g. 32 for an FPN whose coarsest level has stride 32).
            pad_value (float): value of the padding.
            padding_constraints (dict, optional): {"size_divisibility": int, "square_size": int};
                "size_divisibility" overrides the argument of that name, and "square_size" > 0
                pads every image to a square of that side (before rounding up).

        Returns:
            ImageList: tensor (N, C_1, ..., C_K, H, W), contiguous.
        """
        if not torch.jit.is_scripting():
            _check_tensors(tensors)
        # Python ints, except under tracing, where shapes are 0-d tensors that must stay so.
        image_sizes = [(t.shape[-2], t.shape[-1]) for t in tensors]
        max_size = _padded_size(image_sizes, size_divisibility, padding_constraints)

        if len(tensors) == 1:
            height, width = image_sizes[0]
            padding = [0, max_size[1] - width, 0, max_size[0] - height]
            batched = F.pad(tensors[0], padding, value=pad_value).unsqueeze_(0)
        else:
            batch_shape = [len(tensors)] + list(tensors[0].shape[:-2]) + max_size
            batched = tensors[0].new_full(batch_shape, pad_value)
            # One allocation, then one strided copy per image: faster on CPU than
            # F.pad + torch.stack or a nested tensor's to_padded_tensor, which both copy twice.
            for i, image in enumerate(tensors):
                batched[i, ..., : image.shape[-2], : image.shape[-1]].copy_(image)
        return ImageList(batched.contiguous(), image_sizes)


def _check_tensors(tensors: Sequence[torch.Tensor]) -> None:
    if not isinstance(tensors, (list, tuple)):
        raise TypeError(
            f"ImageList.from_tensors takes a list or tuple of tensors, got {type(tensors).__name__}"
        )
    if len(tensors) == 0:
        raise ValueError("ImageList.from_tensors needs at least one tensor")
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"ImageList.from_tensors: element {i} is a {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(
                f"ImageList.from_tensors: element {i} has shape {tuple(t.shape)}; images need "
                "at least 2 dimensions (..., H, W)"
            )
        if t.shape[:-2] != tensors[0].shape[:-2]:
            raise ValueError(
                f"ImageList.from_tensors: element {i} has shape {tuple(t.shape)} but element 0 "
                f"has {tuple(tensors[0].shape)}; all dimensions but the last two must agree"
            )


def _padded_size(
    image_sizes: List[Tuple[int, int]],
    size_divisibility: int,
    padding_constraints: Optional[Dict[str, int]],
) -> List[int]:
    """[H, W] of the batch: the largest image, or the square, rounded up to the divisibility."""
    if not torch.jit.is_scripting() and torch.jit.is_tracing():
        # The maximum is taken in the graph: comparing traced sizes in Python would freeze them.
        largest = torch.stack([torch.stack(size) for size in image_sizes]).max(dim=0).values
        max_size = [largest[0], largest[1]]
    else:
        max_size = [max([size[0] for size in image_sizes]), max([size[1] for size in image_sizes])]
    if padding_constraints is not None:
        square_size = padding_constraints.get("square_size", 0)
        if square_size > 0:
            if square_size < max(max_size):
                raise ValueError(
                    f"ImageList.from_tensors: square_size {square_size} is smaller than the "
                    f"largest image ({max_size[0]} x {max_size[1]})"
                )
            max_size = [square_size, square_size]
        size_divisibility = padding_constraints.get("size_divisibility", size_divisibility)
    if size_divisibility > 1:
        stride = size_divisibility
        max_size = [(s + stride - 1) // stride * stride for s in max_size]
    return max_size
