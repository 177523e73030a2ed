"""Transforms (deterministic) and augmentations (random policies returning transforms).

fvcore's transforms (`Transform`, `TransformList`, `NoOpTransform`, `HFlipTransform`,
`VFlipTransform`, `CropTransform`, `PadTransform`, `BlendTransform`, `ScaleTransform`,
`GridSampleTransform`) are re-exported here, as `detectron2.data.transforms` does.
"""
import types as _types

from fvcore.transforms.transform import (
    BlendTransform,
    CropTransform,
    GridSampleTransform,
    HFlipTransform,
    NoOpTransform,
    PadTransform,
    ScaleTransform,
    Transform,
    TransformList,
    VFlipTransform,
)

from .augmentation import (
    Augmentation,
    AugmentationList,
    AugInput,
    StandardAugInput,
    TransformGen,
    apply_augmentations,
    apply_transform_gens,
)
from .augmentation_impl import (
    FixedSizeCrop,
    RandomApply,
    RandomBrightness,
    RandomContrast,
    RandomCrop,
    RandomCrop_CategoryAreaConstraint,
    RandomExtent,
    RandomFlip,
    RandomLighting,
    RandomResize,
    RandomRotation,
    RandomSaturation,
    Resize,
    ResizeScale,
    ResizeShortestEdge,
)
from .transform import ColorTransform, ExtentTransform, PILColorTransform, ResizeTransform, RotationTransform

__all__ = [k for k, v in globals().items() if not k.startswith("_") and not isinstance(v, _types.ModuleType)]
