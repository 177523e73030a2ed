"""Deterministic transforms that detzoo adds to fvcore's (`Transform`, `TransformList`,
`HFlipTransform`, `CropTransform`, `PadTransform`, `BlendTransform`, ... are fvcore's own
classes, re-exported by `detzoo.data.transforms`).

Coordinates follow fvcore's convention: they are continuous, not pixel indices, so an image of
shape (H, W) spans x in [0, W] and y in [0, H], and the centre of pixel (i, j) is
(j + 0.5, i + 0.5). Boxes are XYXY_ABS; rotated boxes are XYWHA_ABS with the angle in degrees,
counter-clockwise.
"""
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from fvcore.transforms.transform import (
    CropTransform,
    HFlipTransform,
    NoOpTransform,
    Transform,
    TransformList,
)
from PIL import Image

__all__ = [
    "ExtentTransform",
    "ResizeTransform",
    "RotationTransform",
    "ColorTransform",
    "PILColorTransform",
]

# PIL resampling filter -> torch.nn.functional.interpolate mode, for non-uint8 images
_PIL_TO_TORCH_MODE = {Image.NEAREST: "nearest", Image.BILINEAR: "bilinear", Image.BICUBIC: "bicubic"}


def _check_image_size(img: np.ndarray, height: int, width: int, where: str) -> None:
    if img.ndim not in (2, 3) or tuple(img.shape[:2]) != (height, width):
        raise ValueError(
            f"{where}: expects an image of shape ({height}, {width}) or ({height}, {width}, C), "
            f"got an array of shape {tuple(img.shape)}"
        )


def _pil_compatible(img: np.ndarray) -> bool:
    """PIL holds uint8 images with 1, 3 or 4 channels (and 2-D ones)."""
    return img.dtype == np.uint8 and (img.ndim == 2 or img.shape[2] in (1, 3, 4))


def _to_pil(img: np.ndarray) -> Image.Image:
    if img.ndim == 3 and img.shape[2] == 1:
        return Image.fromarray(img[:, :, 0])
    return Image.fromarray(img)


def _from_pil(pil_image: Image.Image, like: np.ndarray) -> np.ndarray:
    out = np.asarray(pil_image)
    if like.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]
    return out


class ExtentTransform(Transform):
    """Cut the rectangle `src_rect` out of the image (it may reach outside the image, where
    `fill` is used) and scale it to `output_size`; PIL's EXTENT transform."""

    def __init__(self, src_rect, output_size, interp=Image.BILINEAR, fill=0):
        """
        Args:
            src_rect (x0, y0, x1, y1): the source rectangle, in input coordinates.
            output_size (h, w): the output image size.
            interp: PIL resampling filter.
            fill: value of output pixels that come from outside the input image.
        """
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray, interp=None) -> np.ndarray:
        """img: uint8 (H, W) or (H, W, C) with C in {1, 3, 4}."""
        if not _pil_compatible(img):
            raise TypeError(
                f"ExtentTransform works on uint8 images with 1, 3 or 4 channels (PIL), got dtype "
                f"{img.dtype} and shape {tuple(img.shape)}"
            )
        h, w = self.output_size
        out = _to_pil(img).transform(
            size=(w, h),
            method=Image.EXTENT,
            data=tuple(float(v) for v in self.src_rect),
            resample=self.interp if interp is None else interp,
            fill=self.fill,
        )
        return _from_pil(out, img)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """coords (ndarray[N, 2]): (x, y); mapped by the affine map src_rect -> output."""
        h, w = self.output_size
        x0, y0, x1, y1 = self.src_rect
        coords = np.asarray(coords, dtype=np.float64)
        scale = np.array([w / (x1 - x0), h / (y1 - y0)])
        return (coords - np.array([x0, y0])) * scale

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self.apply_image(segmentation, interp=Image.NEAREST)


class ResizeTransform(Transform):
    """Resize an image from (h, w) to (new_h, new_w).

    uint8 images go through PIL (as in Detectron2, so pretrained models see the same pixels);
    other dtypes through `torch.nn.functional.interpolate` (align_corners=False).
    """

    def __init__(self, h: int, w: int, new_h: int, new_w: int, interp=None):
        """
        Args:
            h, w (int): input image size.
            new_h, new_w (int): output image size.
            interp: PIL resampling filter; default bilinear.
        """
        super().__init__()
        if interp is None:
            interp = Image.BILINEAR
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray, interp=None) -> np.ndarray:
        """img: (h, w) or (h, w, C), uint8 or floating point. Returns (new_h, new_w[, C])."""
        _check_image_size(img, self.h, self.w, "ResizeTransform")
        interp = self.interp if interp is None else interp
        if _pil_compatible(img):
            resized = _to_pil(img).resize((self.new_w, self.new_h), interp)
            return _from_pil(resized, img)
        return self._interpolate(img, interp)

    def _interpolate(self, img: np.ndarray, interp) -> np.ndarray:
        if interp not in _PIL_TO_TORCH_MODE:
            raise ValueError(
                f"ResizeTransform: interpolation {interp} is not supported for {img.dtype} images; "
                f"use one of {sorted(_PIL_TO_TORCH_MODE)} (PIL NEAREST, BILINEAR, BICUBIC)"
            )
        mode = _PIL_TO_TORCH_MODE[interp]
        tensor = torch.from_numpy(np.ascontiguousarray(img))
        dtype = tensor.dtype
        nchw = (tensor[:, :, None] if img.ndim == 2 else tensor).permute(2, 0, 1)[None]
        if not nchw.is_floating_point():
            nchw = nchw.to(torch.float32)
        kwargs = {} if mode == "nearest" else {"align_corners": False}
        out = F.interpolate(nchw, (self.new_h, self.new_w), mode=mode, **kwargs)[0].permute(1, 2, 0)
        if not dtype.is_floating_point:
            out = out.round().to(dtype)
        out = out.numpy()
        return out[:, :, 0] if img.ndim == 2 else out

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """coords (ndarray[N, 2]): (x, y), scaled by (new_w / w, new_h / h)."""
        scale = np.array([self.new_w / self.w, self.new_h / self.h])
        return np.asarray(coords, dtype=np.float64) * scale

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self.apply_image(segmentation, interp=Image.NEAREST)

    def inverse(self) -> Transform:
        return ResizeTransform(self.new_h, self.new_w, self.h, self.w, self.interp)


def _rotation_matrix(center, angle: float) -> np.ndarray:
    """2x3 affine matrix of a counter-clockwise rotation by `angle` degrees about `center` in
    image coordinates (y pointing down), the same matrix as cv2.getRotationMatrix2D."""
    theta = np.deg2rad(angle)
    cos, sin = np.cos(theta), np.sin(theta)
    cx, cy = center
    return np.array(
        [[cos, sin, (1 - cos) * cx - sin * cy], [-sin, cos, sin * cx + (1 - cos) * cy]],
        dtype=np.float64,
    )


def _apply_affine(matrix: np.ndarray, coords: np.ndarray) -> np.ndarray:
    return coords @ matrix[:, :2].T + matrix[:, 2]


class RotationTransform(Transform):
    """Rotate the image counter-clockwise by `angle` degrees about `center`.

    With `expand=True` the output grows to hold the whole rotated image and the rotation is
    about the image centre; otherwise the output keeps the input size and whatever leaves it is
    lost (then the transform has no inverse).
    """

    def __init__(self, h: int, w: int, angle: float, expand: bool = True, center=None, interp=None):
        """
        Args:
            h, w (int): input image size.
            angle (float): degrees, counter-clockwise.
            expand (bool): grow the output to fit the rotated image.
            center (x, y): rotation centre in input coordinates; default the image centre.
                Without effect when `expand` (the image is re-centred).
            interp: cv2 interpolation flag; default cv2.INTER_LINEAR.
        """
        super().__init__()
        image_center = np.array((w / 2, h / 2))
        if center is None:
            center = image_center
        if interp is None:
            interp = cv2.INTER_LINEAR
        abs_cos, abs_sin = abs(np.cos(np.deg2rad(angle))), abs(np.sin(np.deg2rad(angle)))
        if expand:
            bound_w, bound_h = np.rint([h * abs_sin + w * abs_cos, h * abs_cos + w * abs_sin]).astype(int)
        else:
            bound_w, bound_h = w, h
        self._set_attributes(locals())
        self.rm_coords = self.create_rotation_matrix()
        # cv2.warpAffine addresses pixels by their index, whose centre sits 0.5 before ours
        self.rm_image = self.create_rotation_matrix(offset=-0.5)

    def create_rotation_matrix(self, offset: float = 0) -> np.ndarray:
        """The 2x3 matrix in a frame shifted by `offset` (0 for coordinates, -0.5 for pixel
        indices); with `expand`, translated so the image centre lands on the output centre."""
        matrix = _rotation_matrix((self.center[0] + offset, self.center[1] + offset), self.angle)
        if self.expand:
            rotated_center = _apply_affine(matrix, self.image_center[None] + offset)[0]
            matrix[:, 2] += np.array([self.bound_w / 2, self.bound_h / 2]) + offset - rotated_center
        return matrix

    def apply_image(self, img: np.ndarray, interp=None) -> np.ndarray:
        """img: (h, w) or (h, w, C) array. Returns (bound_h, bound_w[, C])."""
        if img.size == 0 or self.angle % 360 == 0:
            return img
        _check_image_size(img, self.h, self.w, "RotationTransform")
        interp = self.interp if interp is None else interp
        out = cv2.warpAffine(img, self.rm_image, (int(self.bound_w), int(self.bound_h)), flags=interp)
        return out[:, :, None] if img.ndim == 3 and out.ndim == 2 else out

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """coords (ndarray[N, 2]): (x, y)."""
        coords = np.asarray(coords, dtype=np.float64)
        if len(coords) == 0 or self.angle % 360 == 0:
            return coords
        return _apply_affine(self.rm_coords, coords)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self.apply_image(segmentation, interp=cv2.INTER_NEAREST)

    def inverse(self) -> Transform:
        """Rotate back (with expand) and crop the original extent out of the middle."""
        if not self.expand:
            raise NotImplementedError(
                "RotationTransform(expand=False) has no inverse: the corners it cut off are lost"
            )
        rotation = RotationTransform(self.bound_h, self.bound_w, -self.angle, True, None, self.interp)
        crop = CropTransform(
            (rotation.bound_w - self.w) // 2, (rotation.bound_h - self.h) // 2, self.w, self.h
        )
        return TransformList([rotation, crop])


class ColorTransform(Transform):
    """A photometric transform given as a function ndarray -> ndarray; coordinates and
    segmentations are left alone."""

    def __init__(self, op):
        """
        Args:
            op (callable): takes an image ndarray and returns the transformed ndarray.
        """
        if not callable(op):
            raise ValueError(f"ColorTransform needs a callable op, got {type(op).__name__}")
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return self.op(img)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self) -> Transform:
        # like fvcore's BlendTransform: inverses only undo geometry
        return NoOpTransform()


class PILColorTransform(ColorTransform):
    """A photometric transform given as a function on PIL images (e.g. from PIL.ImageEnhance)."""

    def __init__(self, op):
        """
        Args:
            op (callable): takes a PIL.Image and returns the transformed PIL.Image.
        """
        if not callable(op):
            raise ValueError(f"PILColorTransform needs a callable op, got {type(op).__name__}")
        super().__init__(op)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return np.asarray(self.op(Image.fromarray(img)))


def _clip_polygon_to_rect(points: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Clip one polygon (ndarray[N, 2]) to the rectangle [x0, x1] x [y0, y1]
    (Sutherland-Hodgman, one vectorized pass per side).

    A concave polygon that the rectangle cuts in several pieces comes back as one polygon whose
    pieces are joined by zero-area edges along the rectangle's border: it covers the same
    pixels and has the same area as the separate pieces.
    """
    # each side: (axis, bound, keep points with coordinate >= bound if True else <= bound)
    for axis, bound, keep_above in ((0, x0, True), (0, x1, False), (1, y0, True), (1, y1, False)):
        if len(points) == 0:
            break
        prev = np.roll(points, 1, axis=0)
        side = points[:, axis] - bound
        prev_side = prev[:, axis] - bound
        inside = side >= 0 if keep_above else side <= 0
        prev_inside = prev_side >= 0 if keep_above else prev_side <= 0
        crosses = inside != prev_inside
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(crosses, prev_side / (prev_side - side), 0.0)
        intersection = prev + t[:, None] * (points - prev)
        intersection[:, axis] = bound  # exact on the border despite rounding
        # for each edge prev -> cur: the crossing point (if any), then cur (if inside)
        candidates = np.stack([intersection, points], axis=1).reshape(-1, 2)
        points = candidates[np.stack([crosses, inside], axis=1).reshape(-1)]
    return points


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _crop_polygons(crop: CropTransform, polygons: list) -> list:
    """CropTransform on polygons (each ndarray[N, 2]): clip them to the crop window, drop the
    ones left without area, then shift them to the crop's origin.

    Replaces fvcore's version, which needs shapely; detzoo does not depend on it.
    """
    clipped = []
    for polygon in polygons:
        points = _clip_polygon_to_rect(
            np.asarray(polygon, dtype=np.float64).reshape(-1, 2),
            crop.x0, crop.y0, crop.x0 + crop.w, crop.y0 + crop.h,
        )
        if len(points) >= 3 and _polygon_area(points) > 0:
            clipped.append(points - np.array([crop.x0, crop.y0]))
    return clipped


def _hflip_rotated_box(transform: HFlipTransform, rotated_boxes: np.ndarray) -> np.ndarray:
    """rotated_boxes (ndarray[N, 5]): XYWHA_ABS. The centre is mirrored, the angle negated."""
    out = np.array(rotated_boxes, dtype=np.float64)
    out[:, 0] = transform.width - out[:, 0]
    out[:, 4] = -out[:, 4]
    return out


def _resize_rotated_box(transform: ResizeTransform, rotated_boxes: np.ndarray) -> np.ndarray:
    """rotated_boxes (ndarray[N, 5]): XYWHA_ABS. An anisotropic scale does not keep a
    rectangle rectangular; as RotatedBoxes.scale, each side is scaled by the length its
    half-axis gets, and the angle becomes that of the scaled height axis."""
    out = np.array(rotated_boxes, dtype=np.float64)
    sx, sy = transform.new_w / transform.w, transform.new_h / transform.h
    theta = np.deg2rad(out[:, 4])
    cos, sin = np.cos(theta), np.sin(theta)
    out[:, 0] *= sx
    out[:, 1] *= sy
    out[:, 2] *= np.hypot(sx * cos, sy * sin)
    out[:, 3] *= np.hypot(sx * sin, sy * cos)
    out[:, 4] = np.rad2deg(np.arctan2(sx * sin, sy * cos))
    return out


CropTransform.register_type("polygons", _crop_polygons)
HFlipTransform.register_type("rotated_box", _hflip_rotated_box)
ResizeTransform.register_type("rotated_box", _resize_rotated_box)
NoOpTransform.register_type("rotated_box", lambda transform, rotated_boxes: rotated_boxes)
