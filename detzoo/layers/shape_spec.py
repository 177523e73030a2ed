"""ShapeSpec: what a module knows about a tensor's shape before any tensor exists."""
from dataclasses import dataclass
from typing import Optional

__all__ = ["ShapeSpec"]


@dataclass
class ShapeSpec:
    """Shape of a feature map, given to the modules built on top of it (a backbone's
    `output_shape()` -> RPN and ROI heads, a pooler's output -> box head), so that channel
    counts and strides are written once. Every field may be None when unknown.

    Attributes:
        channels (int): C of an (N, C, H, W) feature map.
        height, width (int): H and W, when fixed.
        stride (int): input pixels per feature-map pixel.
    """

    channels: Optional[int] = None
    height: Optional[int] = None
    width: Optional[int] = None
    stride: Optional[int] = None
