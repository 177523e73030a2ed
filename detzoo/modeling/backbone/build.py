"""The backbone registry and the builder that picks an entry from `cfg.MODEL.BACKBONE.NAME`."""
from typing import Optional

from detzoo.layers import ShapeSpec
from detzoo.utils.registry import Registry

from .backbone import Backbone

__all__ = ["BACKBONE_REGISTRY", "build_backbone"]

BACKBONE_REGISTRY = Registry("BACKBONE")
BACKBONE_REGISTRY.__doc__ = """
Backbones: feature extractors turning images into named feature maps.

An entry is called as `entry(cfg, input_shape)`, `input_shape` being the `ShapeSpec` of the
image tensor, and must return a `Backbone`.
"""


def build_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> Backbone:
    """Build the backbone registered under `cfg.MODEL.BACKBONE.NAME`.

    Args:
        cfg: a config node.
        input_shape: the image `ShapeSpec`; by default one channel per entry of
            `cfg.MODEL.PIXEL_MEAN`.
    """
    if input_shape is None:
        input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
    name = cfg.MODEL.BACKBONE.NAME
    backbone = BACKBONE_REGISTRY.get(name)(cfg, input_shape)
    if not isinstance(backbone, Backbone):
        raise TypeError(
            f"BACKBONE_REGISTRY entry {name!r} must return a Backbone, got {type(backbone).__name__}"
        )
    return backbone
