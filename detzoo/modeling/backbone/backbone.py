"""`Backbone`: the interface every feature extractor offers to the rest of a detector."""
from abc import ABCMeta, abstractmethod
from typing import Dict

from torch import nn

from detzoo.layers import ShapeSpec

__all__ = ["Backbone"]


class Backbone(nn.Module, metaclass=ABCMeta):
    """A module mapping an image batch (N, C, H, W) to named feature maps.

    Subclasses implement `forward` returning `dict[str, Tensor]` (e.g. "res4" or "p3" ->
    (N, C_f, H / stride_f, W / stride_f)) and describe those maps with `output_shape()`, so
    heads are built from the shapes instead of retyped channel counts. The default
    `output_shape()` reads the attributes `_out_features` (list of names) and
    `_out_feature_channels` / `_out_feature_strides` (dicts keyed by name).
    """

    def __init__(self):
        super().__init__()

    @abstractmethod
    def forward(self, x):
        """Return `dict[str, Tensor]`: feature name -> feature map (N, C_f, H_f, W_f)."""

    @property
    def size_divisibility(self) -> int:
        """The number input heights and widths must be multiples of (0: no constraint).

        Networks that add top-down features to bottom-up ones (FPN) need every level to be
        exactly twice the size of the next, hence padding to a multiple of the largest stride.
        """
        return 0

    @property
    def padding_constraints(self) -> Dict[str, int]:
        """Optional padding requirements beyond `size_divisibility`.

        Possible keys: "size_divisibility" (overrides the property of that name when present)
        and "square_size" (> 0: pad every image to a square of that side). Empty by default.
        """
        return {}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """Feature name -> `ShapeSpec(channels, stride)` for every feature `forward` returns."""
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }
