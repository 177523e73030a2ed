"""The built-in augmentations (Detectron2's set, same names and arguments)."""
import sys
from typing import Sequence, Tuple

import numpy as np
from fvcore.transforms.transform import (
    BlendTransform,
    CropTransform,
    HFlipTransform,
    NoOpTransform,
    PadTransform,
    Transform,
    TransformList,
    VFlipTransform,
)
from PIL import Image

from .augmentation import Augmentation, _transform_to_aug
from .transform import ExtentTransform, ResizeTransform, RotationTransform

__all__ = [
    "FixedSizeCrop",
    "RandomApply",
    "RandomBrightness",
    "RandomContrast",
    "RandomCrop",
    "RandomExtent",
    "RandomFlip",
    "RandomSaturation",
    "RandomLighting",
    "RandomRotation",
    "Resize",
    "ResizeScale",
    "ResizeShortestEdge",
    "RandomCrop_CategoryAreaConstraint",
    "RandomResize",
]

_CROP_TYPES = ("relative_range", "relative", "absolute", "absolute_range")


def _check_sample_style(sample_style: str, owner: str) -> None:
    if sample_style not in ("range", "choice"):
        raise ValueError(f"{owner}: sample_style must be 'range' or 'choice', got {sample_style!r}")


def _check_rgb(image: np.ndarray, owner: str) -> None:
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"{owner} needs an RGB image (H, W, 3), got shape {tuple(image.shape)}")


class RandomApply(Augmentation):
    """Apply an augmentation (or a fixed transform) with probability `prob`."""

    def __init__(self, tfm_or_aug, prob: float = 0.5):
        """
        Args:
            tfm_or_aug (Augmentation or Transform): what to apply.
            prob (float): probability in [0, 1] of applying it.
        """
        super().__init__()
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"RandomApply: prob must be in [0, 1], got {prob}")
        self.aug = _transform_to_aug(tfm_or_aug)
        self.prob = prob

    def get_transform(self, *args) -> Transform:
        if self._rand_range() < self.prob:
            return self.aug.get_transform(*args)
        return NoOpTransform()

    def __call__(self, aug_input) -> Transform:
        if self._rand_range() < self.prob:
            return self.aug(aug_input)
        return NoOpTransform()


class RandomFlip(Augmentation):
    """Flip the image horizontally or vertically with probability `prob`."""

    def __init__(self, prob: float = 0.5, *, horizontal: bool = True, vertical: bool = False):
        """
        Args:
            prob (float): probability of a flip.
            horizontal, vertical (bool): the flip direction; exactly one must be True (use two
                RandomFlip for both).
        """
        super().__init__()
        if horizontal == vertical:
            raise ValueError(
                "RandomFlip: exactly one of horizontal and vertical must be True, got "
                f"horizontal={horizontal}, vertical={vertical}"
            )
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        if self._rand_range() >= self.prob:
            return NoOpTransform()
        return HFlipTransform(w) if self.horizontal else VFlipTransform(h)


class Resize(Augmentation):
    """Resize to a fixed (h, w)."""

    def __init__(self, shape, interp=Image.BILINEAR):
        """
        Args:
            shape (int or (h, w)): output size; an int means a square.
            interp: PIL resampling filter.
        """
        if isinstance(shape, int):
            shape = (shape, shape)
        shape = tuple(shape)
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        return ResizeTransform(image.shape[0], image.shape[1], self.shape[0], self.shape[1], self.interp)


class ResizeShortestEdge(Augmentation):
    """Resize keeping the aspect ratio so that the short side gets a sampled length, unless
    the long side would then exceed `max_size`, in which case the long side gets `max_size`."""

    def __init__(self, short_edge_length, max_size: int = sys.maxsize, sample_style: str = "range",
                 interp=Image.BILINEAR):
        """
        Args:
            short_edge_length (int or list[int]): with sample_style "range", [min, max] to draw
                the length from (inclusive); with "choice", the lengths to choose from. 0 means
                no resize.
            max_size (int): upper bound of the long side.
            sample_style (str): "range" or "choice".
            interp: PIL resampling filter.
        """
        super().__init__()
        _check_sample_style(sample_style, "ResizeShortestEdge")
        self.is_range = sample_style == "range"
        if isinstance(short_edge_length, int):
            short_edge_length = (short_edge_length, short_edge_length)
        if self.is_range and len(short_edge_length) != 2:
            raise ValueError(
                "ResizeShortestEdge: sample_style 'range' needs short_edge_length = [min, max], got "
                f"{short_edge_length}"
            )
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        if self.is_range:
            size = np.random.randint(self.short_edge_length[0], self.short_edge_length[1] + 1)
        else:
            size = np.random.choice(self.short_edge_length)
        if size == 0:
            return NoOpTransform()
        new_h, new_w = ResizeShortestEdge.get_output_shape(h, w, size, self.max_size)
        return ResizeTransform(h, w, new_h, new_w, self.interp)

    @staticmethod
    def get_output_shape(oldh: int, oldw: int, short_edge_length: int, max_size: int) -> Tuple[int, int]:
        """(new_h, new_w) for an (oldh, oldw) input, rounded half up."""
        scale = short_edge_length / min(oldh, oldw)
        if oldh < oldw:
            new_h, new_w = float(short_edge_length), scale * oldw
        else:
            new_h, new_w = scale * oldh, float(short_edge_length)
        longest = max(new_h, new_w)
        if longest > max_size:
            new_h, new_w = new_h * max_size / longest, new_w * max_size / longest
        return int(new_h + 0.5), int(new_w + 0.5)


class ResizeScale(Augmentation):
    """Large-scale jitter, resize half: draw a scale s in [min_scale, max_scale] and resize,
    keeping the aspect ratio, to fit inside (s * target_height, s * target_width). Pair with
    FixedSizeCrop((target_height, target_width))."""

    def __init__(self, min_scale: float, max_scale: float, target_height: int, target_width: int,
                 interp=Image.BILINEAR):
        """
        Args:
            min_scale, max_scale (float): range of the scale.
            target_height, target_width (int): the target size the scale multiplies.
            interp: PIL resampling filter.
        """
        super().__init__()
        self._init(locals())

    def _get_resize(self, image: np.ndarray, scale: float) -> Transform:
        h, w = image.shape[:2]
        fit = min(scale * self.target_height / h, scale * self.target_width / w)
        new_h, new_w = np.round(np.multiply((h, w), fit)).astype(int)
        return ResizeTransform(h, w, int(new_h), int(new_w), self.interp)

    def get_transform(self, image: np.ndarray) -> Transform:
        return self._get_resize(image, np.random.uniform(self.min_scale, self.max_scale))


class RandomRotation(Augmentation):
    """Rotate counter-clockwise by a sampled angle (degrees) about a sampled centre."""

    def __init__(self, angle, expand: bool = True, center=None, sample_style: str = "range", interp=None):
        """
        Args:
            angle (float or list[float]): with "range", [min, max] degrees; with "choice",
                the angles to choose from.
            expand (bool): grow the output to hold the whole rotated image.
            center (list or None): relative centre ((0, 0) top-left, (1, 1) bottom-right); with
                "range", [[min_x, min_y], [max_x, max_y]]; with "choice", a list of (x, y).
                None means the image centre. Without effect when `expand`.
            sample_style (str): "range" or "choice".
            interp: cv2 interpolation flag.
        """
        super().__init__()
        _check_sample_style(sample_style, "RandomRotation")
        self.is_range = sample_style == "range"
        if isinstance(angle, (float, int)):
            angle = (angle, angle)
        if center is not None and isinstance(center[0], (float, int)):
            center = (center, center)
        self._init(locals())

    def _sample(self):
        if self.is_range:
            angle = np.random.uniform(self.angle[0], self.angle[1])
            center = None if self.center is None else (
                np.random.uniform(self.center[0][0], self.center[1][0]),
                np.random.uniform(self.center[0][1], self.center[1][1]),
            )
        else:
            angle = np.random.choice(self.angle)
            center = None if self.center is None else self.center[np.random.randint(len(self.center))]
        return angle, center

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        angle, center = self._sample()
        if center is not None:
            center = (w * center[0], h * center[1])
        if angle % 360 == 0:
            return NoOpTransform()
        return RotationTransform(h, w, angle, expand=self.expand, center=center, interp=self.interp)


class FixedSizeCrop(Augmentation):
    """Large-scale jitter, crop half: a random `crop_size` window of an image larger than it,
    and (with `pad`) padding on the right and bottom of an image smaller than it, so the output
    is exactly `crop_size`."""

    def __init__(self, crop_size: Tuple[int, int], pad: bool = True, pad_value: float = 128.0,
                 seg_pad_value: int = 255):
        """
        Args:
            crop_size (h, w): output size.
            pad (bool): pad smaller images up to crop_size.
            pad_value (float): image padding value.
            seg_pad_value (int): segmentation padding value (255: ignored by the losses).
        """
        super().__init__()
        self._init(locals())

    def _get_crop(self, image: np.ndarray) -> Transform:
        input_size = np.asarray(image.shape[:2])
        # the crop never reaches past the image, so its inverse (a pad) is exact
        output_size = np.minimum(input_size, self.crop_size)
        max_offset = input_size - output_size
        offset = np.round(max_offset * np.random.uniform(0.0, 1.0)).astype(int)
        return CropTransform(int(offset[1]), int(offset[0]), int(output_size[1]), int(output_size[0]),
                             int(input_size[1]), int(input_size[0]))

    def _get_pad(self, image: np.ndarray) -> Transform:
        input_size = np.asarray(image.shape[:2])
        pad_size = np.maximum(np.subtract(self.crop_size, input_size), 0)
        original_size = np.minimum(input_size, self.crop_size)
        return PadTransform(0, 0, int(pad_size[1]), int(pad_size[0]), int(original_size[1]),
                            int(original_size[0]), self.pad_value, self.seg_pad_value)

    def get_transform(self, image: np.ndarray) -> TransformList:
        transforms = [self._get_crop(image)]
        if self.pad:
            transforms.append(self._get_pad(image))
        return TransformList(transforms)


class RandomCrop(Augmentation):
    """Crop a random window out of the image.

    crop_type:

    - "relative": a (H * crop_size[0], W * crop_size[1]) window, crop_size in (0, 1].
    - "relative_range": like "relative" with the fractions drawn from [crop_size[i], 1].
    - "absolute": a (crop_size[0], crop_size[1]) window (limited to the image size).
    - "absolute_range": height drawn from [crop_size[0], min(H, crop_size[1])] and width from
      [crop_size[0], min(W, crop_size[1])].
    """

    def __init__(self, crop_type: str, crop_size):
        """
        Args:
            crop_type (str): one of "relative_range", "relative", "absolute", "absolute_range".
            crop_size (tuple): two numbers, see above.
        """
        super().__init__()
        if crop_type not in _CROP_TYPES:
            raise ValueError(f"RandomCrop: crop_type must be one of {_CROP_TYPES}, got {crop_type!r}")
        if crop_type == "absolute_range" and crop_size[0] > crop_size[1]:
            raise ValueError(f"RandomCrop: 'absolute_range' needs crop_size[0] <= crop_size[1], got {crop_size}")
        if crop_type.startswith("relative") and not all(0 < s <= 1 for s in crop_size):
            raise ValueError(f"RandomCrop: '{crop_type}' needs crop_size in (0, 1], got {crop_size}")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        crop_h, crop_w = self.get_crop_size((h, w))
        y0 = np.random.randint(h - crop_h + 1)
        x0 = np.random.randint(w - crop_w + 1)
        return CropTransform(x0, y0, crop_w, crop_h, w, h)

    def get_crop_size(self, image_size: Tuple[int, int]) -> Tuple[int, int]:
        """(crop_h, crop_w) in pixels for an image of size (h, w)."""
        h, w = image_size
        if self.crop_type == "relative":
            ch, cw = self.crop_size
            return int(h * ch + 0.5), int(w * cw + 0.5)
        if self.crop_type == "relative_range":
            low = np.asarray(self.crop_size, dtype=np.float32)
            ch, cw = low + np.random.rand(2) * (1 - low)
            return int(h * ch + 0.5), int(w * cw + 0.5)
        if self.crop_type == "absolute":
            return min(self.crop_size[0], h), min(self.crop_size[1], w)
        ch = np.random.randint(min(h, self.crop_size[0]), min(h, self.crop_size[1]) + 1)
        cw = np.random.randint(min(w, self.crop_size[0]), min(w, self.crop_size[1]) + 1)
        return ch, cw


class RandomCrop_CategoryAreaConstraint(Augmentation):
    """RandomCrop for semantic segmentation that tries (up to 10 times) to find a window where
    no single category covers more than `single_category_max_area` of the labelled pixels."""

    def __init__(self, crop_type: str, crop_size, single_category_max_area: float = 1.0,
                 ignored_category: int = None):
        """
        Args:
            crop_type, crop_size: as in RandomCrop.
            single_category_max_area (float): largest allowed area fraction of one category;
                1.0 disables the constraint.
            ignored_category (int): label not counted (usually the ignore label).
        """
        self.crop_aug = RandomCrop(crop_type, crop_size)
        self._init(locals())

    def get_transform(self, image: np.ndarray, sem_seg: np.ndarray) -> Transform:
        if self.single_category_max_area >= 1.0:
            return self.crop_aug.get_transform(image)
        h, w = sem_seg.shape
        for _ in range(10):
            crop_h, crop_w = self.crop_aug.get_crop_size((h, w))
            y0 = np.random.randint(h - crop_h + 1)
            x0 = np.random.randint(w - crop_w + 1)
            labels, counts = np.unique(sem_seg[y0:y0 + crop_h, x0:x0 + crop_w], return_counts=True)
            if self.ignored_category is not None:
                counts = counts[labels != self.ignored_category]
            if len(counts) > 1 and np.max(counts) < np.sum(counts) * self.single_category_max_area:
                break
        return CropTransform(x0, y0, crop_w, crop_h, w, h)


class RandomExtent(Augmentation):
    """Cut a random sub-rectangle (scaled and shifted around the centre; it may reach outside
    the image, which is filled with zeros) and keep it at its own size."""

    def __init__(self, scale_range, shift_range):
        """
        Args:
            scale_range (low, high): range of the rectangle size relative to the image.
            shift_range (x, y): the rectangle moves by up to (W * x / 2, H * y / 2) either way.
        """
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        img_h, img_w = image.shape[:2]
        half = np.array([-0.5 * img_w, -0.5 * img_h, 0.5 * img_w, 0.5 * img_h])
        rect = half * np.random.uniform(self.scale_range[0], self.scale_range[1])
        rect[0::2] += self.shift_range[0] * img_w * (np.random.rand() - 0.5) + 0.5 * img_w
        rect[1::2] += self.shift_range[1] * img_h * (np.random.rand() - 0.5) + 0.5 * img_h
        return ExtentTransform(
            src_rect=tuple(float(v) for v in rect),
            output_size=(int(rect[3] - rect[1]), int(rect[2] - rect[0])),
        )


class RandomContrast(Augmentation):
    """Blend with the image mean by a weight drawn from [intensity_min, intensity_max]
    (1 keeps the image, < 1 lowers contrast, > 1 raises it)."""

    def __init__(self, intensity_min: float, intensity_max: float):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        weight = np.random.uniform(self.intensity_min, self.intensity_max)
        return BlendTransform(src_image=image.mean(), src_weight=1 - weight, dst_weight=weight)


class RandomBrightness(Augmentation):
    """Scale the pixel values by a factor drawn from [intensity_min, intensity_max]."""

    def __init__(self, intensity_min: float, intensity_max: float):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        weight = np.random.uniform(self.intensity_min, self.intensity_max)
        return BlendTransform(src_image=0, src_weight=1 - weight, dst_weight=weight)


class RandomSaturation(Augmentation):
    """Blend an RGB image with its grey version (ITU-R 601 luma) by a weight drawn from
    [intensity_min, intensity_max] (< 1 towards grey)."""

    def __init__(self, intensity_min: float, intensity_max: float):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        _check_rgb(image, "RandomSaturation")
        weight = np.random.uniform(self.intensity_min, self.intensity_max)
        grey = image.dot([0.299, 0.587, 0.114])[:, :, np.newaxis]
        return BlendTransform(src_image=grey, src_weight=1 - weight, dst_weight=weight)


class RandomLighting(Augmentation):
    """AlexNet's PCA lighting noise on an RGB image: add a random combination (weights
    ~ N(0, scale)) of the principal components of ImageNet's pixel colours."""

    # eigenvectors (columns) and eigenvalues of ImageNet's RGB covariance (pixels in [0, 1]),
    # the constants fb.resnet.torch and Detectron2 use
    _EIGEN_VECS = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])
    _EIGEN_VALS = np.array([0.2175, 0.0188, 0.0045])

    def __init__(self, scale: float):
        """
        Args:
            scale (float): standard deviation of the component weights.
        """
        super().__init__()
        self._init(locals())
        self.eigen_vecs = self._EIGEN_VECS.copy()
        self.eigen_vals = self._EIGEN_VALS.copy()

    def get_transform(self, image: np.ndarray) -> Transform:
        _check_rgb(image, "RandomLighting")
        weights = np.random.normal(scale=self.scale, size=3)
        return BlendTransform(src_image=self.eigen_vecs.dot(weights * self.eigen_vals),
                              src_weight=1.0, dst_weight=1.0)


class RandomResize(Augmentation):
    """Resize to an (h, w) drawn from `shape_list`."""

    def __init__(self, shape_list: Sequence[Tuple[int, int]], interp=Image.BILINEAR):
        """
        Args:
            shape_list (list[(h, w)]): the output sizes to choose from.
            interp: PIL resampling filter.
        """
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = self.shape_list[np.random.randint(len(self.shape_list))]
        return ResizeTransform(image.shape[0], image.shape[1], h, w, self.interp)
