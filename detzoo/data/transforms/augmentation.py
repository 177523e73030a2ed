"""Augmentations: random policies that look at the input and return a deterministic `Transform`.

The split is Detectron2's: an `Augmentation` decides (e.g. "flip this one", "resize to 640"),
the returned `Transform` applies the decision to the image and to everything tied to it (boxes,
polygons, keypoints, masks, proposals), and `AugInput` carries the data the decisions need
(image, boxes, sem_seg) and is transformed in place along the way:

    aug_input = AugInput(image, sem_seg=sem_seg)
    transforms = AugmentationList([ResizeShortestEdge(800, 1333), RandomFlip()])(aug_input)
    image, sem_seg = aug_input.image, aug_input.sem_seg
    polygons = transforms.apply_polygons(polygons)

`get_transform`'s parameter names say which attributes of the input it needs (a single
parameter always means "image").
"""
import inspect
import pprint
from typing import Any, List, Optional, Tuple, Union

import numpy as np
from fvcore.transforms.transform import Transform, TransformList

__all__ = [
    "Augmentation",
    "AugmentationList",
    "AugInput",
    "StandardAugInput",
    "TransformGen",
    "apply_augmentations",
    "apply_transform_gens",
]


def _check_img_dtype(img: Any) -> None:
    if not isinstance(img, np.ndarray):
        raise TypeError(f"Augmentations need the image as a numpy array, got {type(img).__name__}")
    if np.issubdtype(img.dtype, np.integer) and img.dtype != np.uint8:
        raise TypeError(f"Augmentations need a uint8 or floating-point image, got dtype {img.dtype}")
    if img.ndim not in (2, 3):
        raise ValueError(
            f"Augmentations need an image of shape (H, W) or (H, W, C), got shape {tuple(img.shape)}"
        )


def _input_arg_names(aug: "Augmentation") -> Tuple[str, ...]:
    """The attribute names `aug.get_transform` takes, from its signature unless set."""
    if aug.input_args is not None:
        return tuple(aug.input_args)
    params = list(inspect.signature(aug.get_transform).parameters.values())
    if len(params) == 1:
        return ("image",)
    for param in params:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(
                f"{type(aug).__name__}.get_transform takes *args/**kwargs, so its inputs cannot be "
                "read from its signature: set `input_args`, or override __call__"
            )
    return tuple(param.name for param in params)


def _get_aug_input_args(aug: "Augmentation", aug_input: Any) -> List[Any]:
    names = _input_arg_names(aug)
    aug.input_args = names
    args = []
    for name in names:
        if not hasattr(aug_input, name):
            raise AttributeError(
                f"{aug}.get_transform() needs '{name}', which {type(aug_input).__name__} does not have"
            )
        args.append(getattr(aug_input, name))
    return args


class Augmentation:
    """A policy that looks at the input and returns the `Transform` to apply.

    Subclasses implement `get_transform(self, image)` (or with more named inputs, e.g.
    `get_transform(self, image, sem_seg)`). Conventions for the inputs:

    * image: ndarray (H, W) or (H, W, C), uint8 in [0, 255] or floating point.
    * boxes: ndarray[N, 4] float32, XYXY_ABS.
    * sem_seg: ndarray[H, W] uint8 of per-pixel labels.
    """

    input_args: Optional[Tuple[str, ...]] = None
    """Names of the `AugInput` attributes that `get_transform` takes; None reads them from its
    signature."""

    def _init(self, params: Optional[dict] = None) -> None:
        """Store the constructor arguments as attributes (call with `locals()`)."""
        for name, value in (params or {}).items():
            if name != "self" and not name.startswith("_"):
                setattr(self, name, value)

    def get_transform(self, *args) -> Transform:
        """Decide, from the inputs named by `input_args`, which Transform to apply."""
        raise NotImplementedError

    def __call__(self, aug_input) -> Transform:
        """Transform `aug_input` in place and return the Transform that was applied."""
        tfm = self.get_transform(*_get_aug_input_args(self, aug_input))
        if not isinstance(tfm, (Transform, TransformList)):
            raise TypeError(
                f"{type(self).__name__}.get_transform must return a Transform, got {type(tfm).__name__}"
            )
        aug_input.transform(tfm)
        return tfm

    def _rand_range(self, low: float = 1.0, high: Optional[float] = None, size=None):
        """Uniform sample in [low, high); with one argument, in [0, low)."""
        if high is None:
            low, high = 0, low
        return np.random.uniform(low, high, [] if size is None else size)

    def __repr__(self) -> str:
        """`Name(arg=value, ...)` for the constructor arguments that differ from their defaults."""
        try:
            params = inspect.signature(self.__init__).parameters.items()
        except (TypeError, ValueError):
            return super().__repr__()
        parts = []
        for name, param in params:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or not hasattr(self, name):
                return super().__repr__()
            value = getattr(self, name)
            if value is param.default:
                continue
            text = pprint.pformat(value)
            parts.append(f"{name}={'...' if chr(10) in text else text}")
        return f"{type(self).__name__}({', '.join(parts)})"

    __str__ = __repr__


class _TransformToAug(Augmentation):
    """An Augmentation that always returns the same Transform."""

    def __init__(self, tfm: Transform):
        self.tfm = tfm

    def get_transform(self, *args) -> Transform:
        return self.tfm

    def __call__(self, aug_input) -> Transform:
        aug_input.transform(self.tfm)
        return self.tfm

    def __repr__(self) -> str:
        return repr(self.tfm)

    __str__ = __repr__


def _transform_to_aug(tfm_or_aug: Union[Transform, Augmentation]) -> Augmentation:
    if isinstance(tfm_or_aug, Augmentation):
        return tfm_or_aug
    if isinstance(tfm_or_aug, Transform):
        return _TransformToAug(tfm_or_aug)
    raise TypeError(f"expected an Augmentation or a Transform, got {type(tfm_or_aug).__name__}")


class AugmentationList(Augmentation):
    """Apply augmentations (or fixed Transforms) one after the other; returns the
    TransformList of what was applied."""

    def __init__(self, augs: List[Union[Augmentation, Transform]]):
        """
        Args:
            augs (list[Augmentation or Transform]): applied in order.
        """
        super().__init__()
        self.augs = [_transform_to_aug(aug) for aug in augs]

    def __call__(self, aug_input) -> TransformList:
        return TransformList([aug(aug_input) for aug in self.augs])

    def __repr__(self) -> str:
        return f"AugmentationList[{', '.join(str(aug) for aug in self.augs)}]"

    __str__ = __repr__


class AugInput:
    """The inputs augmentations look at: an image, and optionally boxes and a semantic
    segmentation. `transform(tfm)` updates all of them in place.

    Any other object with these attributes and a `transform` method works too; that is how to
    feed augmentations that need other inputs.

    Attributes:
        image (ndarray): (H, W) or (H, W, C), uint8 or floating point.
        boxes (ndarray[N, 4] or None): XYXY_ABS.
        sem_seg (ndarray[H, W] or None): per-pixel labels.
    """

    def __init__(self, image: np.ndarray, *, boxes: Optional[np.ndarray] = None,
                 sem_seg: Optional[np.ndarray] = None):
        _check_img_dtype(image)
        self.image = image
        self.boxes = boxes
        self.sem_seg = sem_seg

    def transform(self, tfm: Transform) -> None:
        """Apply `tfm` to every attribute that is set."""
        self.image = tfm.apply_image(self.image)
        if self.boxes is not None:
            self.boxes = tfm.apply_box(self.boxes)
        if self.sem_seg is not None:
            self.sem_seg = tfm.apply_segmentation(self.sem_seg)

    def apply_augmentations(self, augmentations: List[Union[Augmentation, Transform]]) -> TransformList:
        """Apply the augmentations in place and return the TransformList that was applied."""
        return AugmentationList(augmentations)(self)


def apply_augmentations(augmentations: List[Union[Augmentation, Transform]], inputs):
    """Apply augmentations to an image (ndarray) or an AugInput.

    Returns:
        (the augmented image or the AugInput, TransformList)
    """
    if isinstance(inputs, np.ndarray):
        aug_input = AugInput(inputs)
        tfms = aug_input.apply_augmentations(augmentations)
        return aug_input.image, tfms
    return inputs, inputs.apply_augmentations(augmentations)


# Detectron2's older names
StandardAugInput = AugInput
TransformGen = Augmentation
apply_transform_gens = apply_augmentations
