"""Helpers of the detection data pipeline: image reading, moving annotations through
transforms, and turning annotations into the `Instances` the models train on.

Annotations are in Detectron2's dataset format: per instance a dict with "bbox" + "bbox_mode",
"category_id", optionally "segmentation" (COCO polygons list[list[float]] or an RLE dict),
"keypoints" (flat [x0, y0, v0, x1, y1, v1, ...]) and "iscrowd".
"""
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image

from detzoo.structures import (
    BitMasks,
    Boxes,
    BoxMode,
    Instances,
    Keypoints,
    PolygonMasks,
    RotatedBoxes,
    polygons_to_bitmask,
)
from detzoo.utils.file_io import PathManager

from . import transforms as T
from .catalog import MetadataCatalog

__all__ = [
    "SizeMismatchError",
    "convert_image_to_rgb",
    "convert_PIL_to_numpy",
    "check_image_size",
    "transform_proposals",
    "transform_instance_annotations",
    "transform_keypoint_annotations",
    "annotations_to_instances",
    "annotations_to_instances_rotated",
    "build_augmentation",
    "build_transform_gen",
    "create_keypoint_hflip_indices",
    "filter_empty_instances",
    "get_fed_loss_cls_weights",
    "gen_crop_transform_with_instance",
    "check_metadata_consistency",
    "read_image",
    "read_sem_seg",
]


class SizeMismatchError(ValueError):
    """The image read from disk does not have the width/height its dataset dict states."""


# ITU-R BT.601 (SDTV) RGB <-> YUV matrices, RGB in [0, 1]
_M_RGB2YUV = [[0.299, 0.587, 0.114], [-0.14713, -0.28886, 0.436], [0.615, -0.51499, -0.10001]]
_M_YUV2RGB = [[1.0, 0.0, 1.13983], [1.0, -0.39465, -0.58060], [1.0, 2.03211, 0.0]]

_EXIF_ORIENTATION_TAG = 274
# EXIF orientation value -> the PIL transpose that undoes it
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# formats PIL does not have; read as RGB and converted afterwards
_NON_PIL_FORMATS = ("BGR", "YUV-BT.601")


def _check_format(format: Optional[str]) -> None:
    if format is not None and format not in _NON_PIL_FORMATS and format not in Image.MODES:
        raise ValueError(
            f"image format {format!r} is not supported; use None (as stored), 'BGR', 'YUV-BT.601' "
            f"or a PIL mode: {', '.join(Image.MODES)}"
        )


def convert_PIL_to_numpy(image: Image.Image, format: Optional[str]) -> np.ndarray:
    """A PIL image as an ndarray in `format` (see `read_image`)."""
    _check_format(format)
    if format is not None:
        image = image.convert("RGB" if format in _NON_PIL_FORMATS else format)
    array = np.asarray(image)
    if format == "L":
        return array[:, :, None]  # keep the channel axis PIL drops
    if format == "BGR":
        # a contiguous copy (cv2 swaps channels ~40x faster than numpy copies a reversed view,
        # and every later step, PIL's resize first, would copy the view anyway)
        return cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    if format == "YUV-BT.601":
        return np.dot(array / 255.0, np.array(_M_RGB2YUV).T)
    return array


def convert_image_to_rgb(image: Union[np.ndarray, torch.Tensor], format: str) -> np.ndarray:
    """Convert an (H, W, C) image in `format` (see `read_image`) to RGB.

    Returns:
        ndarray (H, W, 3): RGB in [0, 255], uint8 or floating point.
    """
    if isinstance(image, torch.Tensor):
        image = image.cpu().numpy()
    if format == "BGR":
        return image[:, :, [2, 1, 0]]
    if format == "YUV-BT.601":
        return np.dot(image, np.array(_M_YUV2RGB).T) * 255.0
    _check_format(format)
    if format == "L":
        image = image[:, :, 0]
    image = np.ascontiguousarray(image.astype(np.uint8))
    pil_image = Image.frombytes(format, (image.shape[1], image.shape[0]), image.tobytes())
    return np.asarray(pil_image.convert("RGB"))


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip the image as its EXIF orientation tag says (cameras store portrait photos
    as landscape pixels plus that tag). Images without readable EXIF are returned as they are."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION_TAG)
    except Exception:  # malformed EXIF blocks are common in the wild; the pixels are still fine
        return image
    method = _EXIF_TRANSPOSE.get(orientation)
    return image if method is None else image.transpose(method)


def read_image(file_name: str, format: Optional[str] = None) -> np.ndarray:
    """Read an image, applying its EXIF orientation.

    Args:
        file_name (str): a path PathManager can open.
        format (str): None (as stored), "BGR", "YUV-BT.601", or a PIL mode ("RGB", "L", ...).

    Returns:
        ndarray (H, W, C): uint8 in [0, 255] for "BGR" and PIL modes ("L" keeps C = 1); float64
        for "YUV-BT.601" (Y in [0, 1]).
    """
    _check_format(format)
    with PathManager.open(file_name, "rb") as f:
        try:
            image = Image.open(f)
            image = _apply_exif_orientation(image)
            return convert_PIL_to_numpy(image, format)
        except OSError as e:  # PIL's decode errors (UnidentifiedImageError, truncated files)
            raise type(e)(f"cannot read image {file_name}: {e}") from e


def read_sem_seg(file_name: str) -> np.ndarray:
    """Read a semantic-segmentation label image (a detzoo addition).

    Returns:
        ndarray[H, W] uint8 of class ids. Palette ("P") images give their palette indices, as
        annotation tools write them (Detectron2 converts them to grey levels, which mixes up
        the ids).
    """
    with PathManager.open(file_name, "rb") as f:
        image = _apply_exif_orientation(Image.open(f))
        if image.mode not in ("L", "P"):
            raise ValueError(
                f"{file_name}: a semantic segmentation must be a single-channel 8-bit label image "
                f"(PIL mode 'L' or 'P'), got mode {image.mode!r}"
            )
        return np.asarray(image, dtype=np.uint8)


def check_image_size(dataset_dict: Dict[str, Any], image: np.ndarray) -> None:
    """Raise SizeMismatchError if `image` is not the size the dict states; fill in the dict's
    "width" and "height" when absent (the model rescales outputs to them)."""
    image_wh = (image.shape[1], image.shape[0])
    if "width" in dataset_dict or "height" in dataset_dict:
        expected_wh = (dataset_dict.get("width"), dataset_dict.get("height"))
        if image_wh != expected_wh:
            where = dataset_dict.get("file_name", f"image_id {dataset_dict.get('image_id', '?')}")
            raise SizeMismatchError(
                f"{where}: the image is {image_wh[0]}x{image_wh[1]} (width x height) but its dataset "
                f"dict says {expected_wh[0]}x{expected_wh[1]}; fix the width/height in the annotations"
            )
    dataset_dict.setdefault("width", image_wh[0])
    dataset_dict.setdefault("height", image_wh[1])


def transform_proposals(dataset_dict: Dict[str, Any], image_shape: Tuple[int, int], transforms,
                        *, proposal_topk: int, min_box_size: float = 0) -> None:
    """Move the precomputed proposals of `dataset_dict` through `transforms`, in place.

    The keys "proposal_boxes", "proposal_objectness_logits" and "proposal_bbox_mode" are
    replaced by "proposals": Instances with `proposal_boxes` (Boxes, XYXY_ABS, clipped to
    `image_shape`, sides > min_box_size) and `objectness_logits` (Tensor[R]), the first
    `proposal_topk` of them (the file stores them sorted by score).
    """
    if "proposal_boxes" not in dataset_dict:
        return
    boxes = BoxMode.convert(
        np.asarray(dataset_dict.pop("proposal_boxes")), dataset_dict.pop("proposal_bbox_mode"), BoxMode.XYXY_ABS
    )
    boxes = Boxes(transforms.apply_box(boxes))
    logits = torch.as_tensor(np.asarray(dataset_dict.pop("proposal_objectness_logits")).astype("float32"))
    boxes.clip(image_shape)
    keep = boxes.nonempty(threshold=min_box_size)
    proposals = Instances(image_shape)
    proposals.proposal_boxes = boxes[keep][:proposal_topk]
    proposals.objectness_logits = logits[keep][:proposal_topk]
    dataset_dict["proposals"] = proposals


def _annotation_name(annotation: Dict[str, Any]) -> str:
    return f"annotation {annotation['id']}" if "id" in annotation else "an annotation"


def _as_transform_list(transforms) -> T.TransformList:
    if isinstance(transforms, T.TransformList):
        return transforms
    if isinstance(transforms, (list, tuple)):
        return T.TransformList(list(transforms))
    return T.TransformList([transforms])


def _transform_polygons(polygons: list, transforms: T.TransformList, annotation: Dict[str, Any]) -> list:
    arrays = []
    for polygon in polygons:
        polygon = np.array(polygon, dtype=np.float64)  # a copy: some transforms work in place
        if polygon.ndim != 1 or len(polygon) % 2 != 0:
            raise ValueError(
                f"{_annotation_name(annotation)}: a segmentation polygon must be a flat list "
                f"[x0, y0, x1, y1, ...], got shape {polygon.shape}"
            )
        arrays.append(polygon.reshape(-1, 2))
    return [p.reshape(-1) for p in transforms.apply_polygons(arrays)]


def _decode_rle(segm: Dict[str, Any]) -> np.ndarray:
    if isinstance(segm.get("counts"), list):  # uncompressed RLE: compress it first
        h, w = segm["size"]
        segm = mask_util.frPyObjects(segm, h, w)
    return mask_util.decode(segm)


def transform_instance_annotations(annotation: Dict[str, Any], transforms, image_size: Tuple[int, int], *,
                                   keypoint_hflip_indices: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """Move one instance's box, segmentation and keypoints through `transforms`, in place.

    The box is transformed with `apply_box` and clipped to the image; polygons with
    `apply_polygons` (a crop clips them); an RLE is decoded to a mask and moved with
    `apply_segmentation`; keypoints see `transform_keypoint_annotations`.

    Args:
        annotation (dict): one instance, Detectron2's dataset format.
        transforms (TransformList or list[Transform]):
        image_size (h, w): size of the transformed image.
        keypoint_hflip_indices (list[int]): see `create_keypoint_hflip_indices`.

    Returns:
        dict: `annotation`, with "bbox" an ndarray[4] in XYXY_ABS ("bbox_mode" set to match),
        "segmentation" a list of flat ndarrays (polygons) or an ndarray[h, w] uint8 (from an
        RLE), and "keypoints" an ndarray[K, 3].
    """
    transforms = _as_transform_list(transforms)
    bbox = BoxMode.convert(annotation["bbox"], annotation["bbox_mode"], BoxMode.XYXY_ABS)
    bbox = transforms.apply_box(np.array([bbox], dtype=np.float64))[0].clip(min=0)
    annotation["bbox"] = np.minimum(bbox, [image_size[1], image_size[0]] * 2)
    annotation["bbox_mode"] = BoxMode.XYXY_ABS

    if "segmentation" in annotation:
        segm = annotation["segmentation"]
        if isinstance(segm, list):
            annotation["segmentation"] = _transform_polygons(segm, transforms, annotation)
        elif isinstance(segm, dict):
            mask = transforms.apply_segmentation(_decode_rle(segm))
            if tuple(mask.shape[:2]) != tuple(image_size):
                raise ValueError(
                    f"{_annotation_name(annotation)}: the transformed RLE mask is {tuple(mask.shape[:2])} "
                    f"but the transformed image is {tuple(image_size)}; the RLE 'size' does not match the image"
                )
            annotation["segmentation"] = mask
        else:
            raise ValueError(
                f"{_annotation_name(annotation)}: cannot transform a segmentation of type "
                f"{type(segm).__name__}; expected polygons (list[list[float]]) or a COCO RLE dict"
            )

    if "keypoints" in annotation:
        annotation["keypoints"] = transform_keypoint_annotations(
            annotation["keypoints"], transforms, image_size, keypoint_hflip_indices
        )
    return annotation


def transform_keypoint_annotations(keypoints, transforms, image_size: Tuple[int, int],
                                   keypoint_hflip_indices: Optional[Sequence[int]] = None) -> np.ndarray:
    """Move one instance's keypoints through `transforms`.

    Keypoints that end up outside the image become unlabeled (v = 0, and as in COCO x = y = 0).
    After an odd number of horizontal flips, left and right keypoints swap places using
    `keypoint_hflip_indices`.

    Args:
        keypoints (list[float] or ndarray): flat [x0, y0, v0, ...] (or (K, 3)).
        transforms (TransformList or list[Transform]):
        image_size (h, w): size of the transformed image.
        keypoint_hflip_indices (list[int]): see `create_keypoint_hflip_indices`.

    Returns:
        ndarray[K, 3] float64.
    """
    transforms = _as_transform_list(transforms)
    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(-1, 3).copy()
    if keypoint_hflip_indices is not None and len(keypoints) != len(keypoint_hflip_indices):
        raise ValueError(
            f"the keypoint annotation has {len(keypoints)} points but the metadata "
            f"(keypoint_names / keypoint_flip_map) has {len(keypoint_hflip_indices)}"
        )
    xy = transforms.apply_coords(keypoints[:, :2].copy())
    inside = ((xy >= 0) & (xy <= np.array([image_size[1], image_size[0]]))).all(axis=1)
    keypoints[:, :2] = xy
    keypoints[~inside, 2] = 0

    num_hflips = sum(isinstance(t, T.HFlipTransform) for t in transforms.transforms)
    if num_hflips % 2 == 1:
        if keypoint_hflip_indices is None:
            raise ValueError(
                "keypoints were flipped horizontally but no keypoint_hflip_indices were given to "
                "swap left and right (see create_keypoint_hflip_indices)"
            )
        keypoints = keypoints[np.asarray(keypoint_hflip_indices, dtype=np.int64)]
    keypoints[keypoints[:, 2] == 0] = 0
    return keypoints


def _segmentation_to_bitmask(segm: Any, image_size: Tuple[int, int]) -> np.ndarray:
    if isinstance(segm, list):
        return polygons_to_bitmask(segm, *image_size)
    if isinstance(segm, dict):
        return _decode_rle(segm)
    if isinstance(segm, np.ndarray):
        if segm.ndim != 2:
            raise ValueError(f"a segmentation mask must be 2-D (H, W), got shape {segm.shape}")
        return segm
    raise ValueError(
        f"cannot turn a segmentation of type {type(segm).__name__} into a bit mask; expected "
        "polygons (list[list[float]]), a COCO RLE dict, or an (H, W) ndarray"
    )


def _instance_masks(segms: List[Any], image_size: Tuple[int, int], mask_format: str):
    if mask_format == "polygon":
        try:
            return PolygonMasks(segms)
        except ValueError as e:
            raise ValueError(
                "cannot build PolygonMasks from these annotations (INPUT.MASK_FORMAT='polygon'); "
                "use 'bitmask' for RLE or array segmentations"
            ) from e
    masks = [_segmentation_to_bitmask(segm, image_size) for segm in segms]
    return BitMasks(torch.stack([torch.from_numpy(np.ascontiguousarray(m)) for m in masks]))


def _instance_keypoints(annos: List[Dict[str, Any]]) -> Keypoints:
    arrays = [None if "keypoints" not in obj else np.asarray(obj["keypoints"], dtype=np.float32).reshape(-1, 3)
              for obj in annos]
    num_keypoints = next(len(a) for a in arrays if a is not None)
    # an instance without keypoints has them all unlabeled
    arrays = [np.zeros((num_keypoints, 3), np.float32) if a is None else a for a in arrays]
    if any(len(a) != num_keypoints for a in arrays):
        raise ValueError(
            f"instances of one image have different keypoint counts: {sorted({len(a) for a in arrays})}"
        )
    return Keypoints(np.stack(arrays))


def annotations_to_instances(annos: List[Dict[str, Any]], image_size: Tuple[int, int],
                             mask_format: str = "polygon") -> Instances:
    """The `Instances` the models train on, from one image's (transformed) annotations.

    Args:
        annos (list[dict]): instance annotations.
        image_size (h, w):
        mask_format (str): "polygon" (PolygonMasks) or "bitmask" (BitMasks).

    Returns:
        Instances with `gt_boxes` (Boxes, XYXY_ABS), `gt_classes` (Tensor[N] int64), and when
        the annotations have them `gt_masks` and `gt_keypoints` (Keypoints [N, K, 3]).
    """
    if mask_format not in ("polygon", "bitmask"):
        raise ValueError(f"mask_format must be 'polygon' or 'bitmask', got {mask_format!r}")
    boxes = [BoxMode.convert(obj["bbox"], obj["bbox_mode"], BoxMode.XYXY_ABS) for obj in annos]
    target = Instances(image_size)
    target.gt_boxes = Boxes(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
    target.gt_classes = torch.tensor([int(obj["category_id"]) for obj in annos], dtype=torch.int64)
    if len(annos) and "segmentation" in annos[0]:
        target.gt_masks = _instance_masks([obj["segmentation"] for obj in annos], image_size, mask_format)
    if len(annos) and "keypoints" in annos[0]:
        target.gt_keypoints = _instance_keypoints(annos)
    return target


def annotations_to_instances_rotated(annos: List[Dict[str, Any]], image_size: Tuple[int, int]) -> Instances:
    """Like `annotations_to_instances` for rotated boxes ("bbox" in XYWHA_ABS): `gt_boxes`
    (RotatedBoxes, clipped to the image) and `gt_classes`."""
    target = Instances(image_size)
    boxes = RotatedBoxes(np.asarray([obj["bbox"] for obj in annos], dtype=np.float32).reshape(-1, 5))
    boxes.clip(image_size)
    target.gt_boxes = boxes
    target.gt_classes = torch.tensor([int(obj["category_id"]) for obj in annos], dtype=torch.int64)
    return target


def filter_empty_instances(instances: Instances, by_box: bool = True, by_mask: bool = True,
                           box_threshold: float = 1e-5, return_mask: bool = False):
    """Drop instances whose box has a side <= box_threshold, or whose mask is empty.

    Returns:
        Instances, and the BoolTensor[N] of kept instances when `return_mask`.
    """
    if not (by_box or by_mask):
        raise ValueError("filter_empty_instances: at least one of by_box and by_mask must be True")
    keep = torch.ones(len(instances), dtype=torch.bool)
    if by_box:
        keep &= instances.gt_boxes.nonempty(threshold=box_threshold)
    if by_mask and instances.has("gt_masks"):
        keep &= instances.gt_masks.nonempty()
    return (instances[keep], keep) if return_mask else instances[keep]


def _as_name_list(dataset_names: Union[str, Sequence[str]]) -> List[str]:
    return [dataset_names] if isinstance(dataset_names, str) else list(dataset_names)


def create_keypoint_hflip_indices(dataset_names: Union[str, Sequence[str]]) -> List[int]:
    """For each keypoint, the index of its mirror image (from the metadata's `keypoint_names`
    and `keypoint_flip_map`, which must agree across `dataset_names`).

    Returns:
        list[int] of length K.
    """
    dataset_names = _as_name_list(dataset_names)
    check_metadata_consistency("keypoint_names", dataset_names)
    check_metadata_consistency("keypoint_flip_map", dataset_names)
    meta = MetadataCatalog.get(dataset_names[0])
    names = list(meta.keypoint_names)
    flip_map = dict(meta.keypoint_flip_map)
    flip_map.update({right: left for left, right in flip_map.items()})
    unknown = sorted(set(flip_map) - set(names))
    if unknown:
        raise ValueError(
            f"dataset {dataset_names[0]!r}: keypoint_flip_map names {unknown}, which are not in keypoint_names"
        )
    return [names.index(flip_map.get(name, name)) for name in names]


def get_fed_loss_cls_weights(dataset_names: Union[str, Sequence[str]], freq_weight_power: float = 1.0) -> torch.Tensor:
    """Federated-loss class weights: the number of images of each class (metadata
    `class_image_count`, a list of {"id", "image_count"}) to the power `freq_weight_power`.

    Returns:
        Tensor[num_classes] float32, ordered by class id.
    """
    dataset_names = _as_name_list(dataset_names)
    check_metadata_consistency("class_image_count", dataset_names)
    counts = MetadataCatalog.get(dataset_names[0]).class_image_count
    frequencies = torch.tensor([c["image_count"] for c in sorted(counts, key=lambda c: c["id"])])
    return frequencies.float() ** freq_weight_power


def gen_crop_transform_with_instance(crop_size: Tuple[int, int], image_size: Tuple[int, int],
                                     instance: Dict[str, Any]) -> T.CropTransform:
    """A random `crop_size` (h, w) CropTransform of an `image_size` (h, w) image whose window
    contains the centre of `instance`'s box."""
    crop_size = np.asarray(crop_size, dtype=np.int64)
    image_size = np.asarray(image_size, dtype=np.int64)
    bbox = BoxMode.convert(instance["bbox"], instance["bbox_mode"], BoxMode.XYXY_ABS)
    center_yx = np.array([(bbox[1] + bbox[3]) * 0.5, (bbox[0] + bbox[2]) * 0.5])
    if (center_yx > image_size).any() or (center_yx < 0).any():
        raise ValueError(
            f"{_annotation_name(instance)}: the box {list(bbox)} (XYXY) has its centre outside the "
            f"image of size (h, w) = {tuple(image_size)}"
        )
    if (crop_size > image_size).any():
        raise ValueError(f"crop size {tuple(crop_size)} is larger than the image size {tuple(image_size)}")
    min_yx = np.maximum(np.floor(center_yx).astype(np.int64) - crop_size, 0)
    max_yx = np.minimum(image_size - crop_size, np.ceil(center_yx).astype(np.int64))
    y0 = np.random.randint(min_yx[0], max_yx[0] + 1)
    x0 = np.random.randint(min_yx[1], max_yx[1] + 1)
    return T.CropTransform(int(x0), int(y0), int(crop_size[1]), int(crop_size[0]),
                           int(image_size[1]), int(image_size[0]))


def check_metadata_consistency(key: str, dataset_names: Sequence[str]) -> None:
    """Raise ValueError unless every dataset's metadata has the same value for `key`
    (AttributeError when one of them has none)."""
    if len(dataset_names) == 0:
        return
    entries = [getattr(MetadataCatalog.get(name), key) for name in dataset_names]
    for name, entry in zip(dataset_names, entries):
        if entry != entries[0]:
            logging.getLogger(__name__).error(
                f"Metadata '{key}': {dataset_names[0]!r} has {entries[0]}, {name!r} has {entry}"
            )
            raise ValueError(
                f"datasets {dataset_names[0]!r} and {name!r} have different metadata '{key}': "
                f"{entries[0]} vs {entry}"
            )


def build_augmentation(cfg, is_train: bool) -> List[T.Augmentation]:
    """The default augmentations from cfg.INPUT: ResizeShortestEdge, and in training a
    RandomFlip unless INPUT.RANDOM_FLIP is "none"."""
    if is_train:
        min_size, max_size = cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN
        sample_style = cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
    else:
        min_size, max_size, sample_style = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice"
    augmentation = [T.ResizeShortestEdge(min_size, max_size, sample_style)]
    flip = cfg.INPUT.RANDOM_FLIP
    if flip not in ("horizontal", "vertical", "none"):
        raise ValueError(f"INPUT.RANDOM_FLIP must be 'horizontal', 'vertical' or 'none', got {flip!r}")
    if is_train and flip != "none":
        augmentation.append(T.RandomFlip(horizontal=flip == "horizontal", vertical=flip == "vertical"))
    return augmentation


build_transform_gen = build_augmentation  # Detectron2's older name
