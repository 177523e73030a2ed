"""COCO-format datasets: instances JSON -> Detectron2's list[dict], semantic-segmentation PNG
folders, and the way back (a registered dataset -> a COCO JSON file, for the evaluators).

The loaders check the annotation file at the boundary. A malformed file (a missing field, a
wrong type, a negative box size, an unknown category, a keypoint list of the wrong length)
raises an error naming the file and the image / annotation id. The defects Detectron2 users
expect to be tolerated are skipped, counted, and reported once in the log: polygons with
fewer than 3 points or an odd number of coordinates (as Detectron2 does), boxes of zero size
or lying entirely outside their image, annotations of images the file does not list. A file
whose every annotation would be skipped raises instead.
"""
import contextlib
import datetime
import io
import json
import logging
import math
import os
import shutil
from collections import Counter, defaultdict
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from iopath.common.file_io import file_lock

from detzoo.structures import BoxMode, polygon_area
from detzoo.utils.file_io import PathManager

from ..catalog import DatasetCatalog, MetadataCatalog

__all__ = ["load_coco_json", "load_sem_seg", "convert_to_coco_dict", "convert_to_coco_json",
           "register_coco_instances"]

logger = logging.getLogger(__name__)

# Annotation fields copied into the dataset dicts (besides "segmentation", handled apart).
_ANNOTATION_KEYS = ("iscrowd", "bbox", "keypoints", "category_id")


# ---------------------------------------------------------------------------------- reading
def _read_json(json_file: str) -> Any:
    local = PathManager.get_local_path(json_file)
    with PathManager.open(local, "r") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{json_file}: not a valid JSON file ({e})") from e


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_images(json_file: str, images: Any) -> None:
    if not isinstance(images, list):
        raise ValueError(f"{json_file}: 'images' must be a list, got {type(images).__name__}")
    seen = set()
    for index, img in enumerate(images):
        where = f"{json_file}: images[{index}]"
        if not isinstance(img, dict):
            raise ValueError(f"{where} must be a dict, got {type(img).__name__}")
        if "id" not in img:
            raise ValueError(f"{where} has no 'id'")
        where = f"{json_file}: image {img['id']!r}"
        if not isinstance(img["id"], (int, str)) or isinstance(img["id"], bool):
            raise ValueError(f"{where}: the id must be an int or a str")
        if img["id"] in seen:
            raise ValueError(f"{where} is listed twice in 'images'")
        seen.add(img["id"])
        if not isinstance(img.get("file_name"), str):
            raise ValueError(f"{where}: 'file_name' must be a str, got {img.get('file_name')!r}")
        for key in ("height", "width"):
            if not _is_int(img.get(key)) or img[key] <= 0:
                raise ValueError(f"{where}: '{key}' must be a positive int, got {img.get(key)!r}")


def _check_categories(json_file: str, categories: Any) -> None:
    if not isinstance(categories, list):
        raise ValueError(f"{json_file}: 'categories' must be a list, got {type(categories).__name__}")
    seen = set()
    for index, cat in enumerate(categories):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")) or not isinstance(cat.get("name"), str):
            raise ValueError(f"{json_file}: categories[{index}] must be a dict with an int 'id' and a str "
                             f"'name', got {cat!r}")
        if cat["id"] in seen:
            raise ValueError(f"{json_file}: category id {cat['id']} is listed twice in 'categories'")
        seen.add(cat["id"])


def _check_annotation_fields(json_file: str, annotations: Any) -> None:
    if not isinstance(annotations, list):
        raise ValueError(f"{json_file}: 'annotations' must be a list, got {type(annotations).__name__}")
    for index, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise ValueError(f"{json_file}: annotations[{index}] must be a dict, got {type(ann).__name__}")
        if not _is_int(ann.get("id")):
            raise ValueError(f"{json_file}: annotations[{index}] needs an int 'id', got {ann.get('id')!r}")
        for key in ("image_id", "category_id", "bbox"):
            if key not in ann:
                raise ValueError(f"{json_file}: annotation {ann['id']} has no '{key}'")


def _check_unique_annotation_ids(json_file: str, annotations: List[dict]) -> None:
    # COCO 2014's minival / valminusminival files repeat a few ids; Detectron2 accepts them
    # for those files only, and so do we.
    if "minival" in os.path.basename(json_file):
        return
    counts = Counter(ann["id"] for ann in annotations)
    repeated = sorted(ann_id for ann_id, n in counts.items() if n > 1)
    if repeated:
        raise ValueError(f"{json_file}: annotation ids are not unique: {repeated[:10]} "
                         f"{'...' if len(repeated) > 10 else ''}appear more than once")


def _coco_api(dataset: dict):
    """pycocotools' index of an already validated COCO dict."""
    from pycocotools.coco import COCO

    coco_api = COCO()
    coco_api.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco_api.createIndex()
    return coco_api


class _SkipLog:
    """Counts skipped annotations per reason, with a few example ids, for one log line."""

    def __init__(self):
        self.ids = defaultdict(list)

    def add(self, reason: str, ann_id: Any) -> None:
        self.ids[reason].append(ann_id)

    def total(self) -> int:
        return sum(len(v) for v in self.ids.values())

    def report(self, json_file: str, num_annotations: int) -> None:
        if not self.ids:
            return
        parts = [f"{len(ids)} {reason} (annotation ids {', '.join(map(str, ids[:5]))}"
                 f"{', ...' if len(ids) > 5 else ''})" for reason, ids in self.ids.items()]
        logger.warning(f"{json_file}: skipped {self.total()} of {num_annotations} annotations: {'; '.join(parts)}")


# ------------------------------------------------------------------------ annotation checks
def _check_bbox(bbox: Any, where: str) -> List[float]:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise ValueError(f"{where}: 'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}")
    if bbox[2] < 0 or bbox[3] < 0:
        raise ValueError(f"{where}: 'bbox' {list(bbox)} has a negative width or height")
    return list(bbox)


def _box_is_unusable(bbox: List[float], height: int, width: int) -> Optional[str]:
    x, y, w, h = bbox
    if w == 0 or h == 0:
        return "with a box of zero width or height"
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        return "with a box entirely outside the image"
    return None


def _convert_rle(segm: dict, height: int, width: int, where: str) -> dict:
    import pycocotools.mask as mask_util

    if "counts" not in segm or "size" not in segm:
        raise ValueError(f"{where}: an RLE 'segmentation' needs 'counts' and 'size', got keys {sorted(segm)}")
    if list(segm["size"]) != [height, width]:
        raise ValueError(f"{where}: the RLE size {list(segm['size'])} differs from the image size "
                         f"[height, width] = {[height, width]}")
    if isinstance(segm["counts"], list):  # uncompressed RLE -> the compressed form the rest expects
        return mask_util.frPyObjects(segm, height, width)
    if not isinstance(segm["counts"], (str, bytes)):
        raise ValueError(f"{where}: RLE 'counts' must be a list, str or bytes, got {type(segm['counts']).__name__}")
    return segm


def _valid_polygons(segm: list, where: str) -> List[List[float]]:
    for poly in segm:
        if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
            raise ValueError(f"{where}: a polygon 'segmentation' must be a list of lists of numbers, "
                             f"got an element {str(poly)[:80]}")
    return [poly for poly in segm if len(poly) % 2 == 0 and len(poly) >= 6]


def _convert_keypoints(keypoints: Any, num_expected: Optional[int], where: str) -> List[float]:
    if not isinstance(keypoints, list) or len(keypoints) % 3 != 0 or not all(_is_number(v) for v in keypoints):
        raise ValueError(f"{where}: 'keypoints' must be a flat list [x1, y1, v1, ...] of 3*K numbers, "
                         f"got {str(keypoints)[:80]}")
    if num_expected is not None and len(keypoints) != 3 * num_expected:
        raise ValueError(f"{where}: has {len(keypoints) // 3} keypoints but its category names {num_expected}")
    if any(v not in (0, 1, 2) for v in keypoints[2::3]):
        raise ValueError(f"{where}: keypoint visibilities must be 0, 1 or 2, got {keypoints[2::3]}")
    # COCO keypoints are integer pixel indices; +0.5 puts them at the pixel centres in the
    # continuous coordinates that boxes and polygons use.
    return [v + 0.5 if i % 3 != 2 else v for i, v in enumerate(keypoints)]


# --------------------------------------------------------------------------------- loading
def _category_metadata(json_file: str, categories: List[dict], dataset_name: str) -> Dict[int, int]:
    if not categories:
        raise ValueError(f"{json_file}: has annotations but no 'categories'; cannot name the classes of "
                         f"dataset {dataset_name!r}")
    categories = sorted(categories, key=lambda c: c["id"])
    cat_ids = [c["id"] for c in categories]
    if cat_ids != list(range(1, len(cat_ids) + 1)) and "coco" not in dataset_name:
        logger.info(f"{json_file}: category ids are not 1..{len(cat_ids)}; they are mapped to contiguous ids "
                    "0..#categories-1 in id order (metadata 'thing_dataset_id_to_contiguous_id')")
    id_map = {cat_id: i for i, cat_id in enumerate(cat_ids)}
    MetadataCatalog.get(dataset_name).set(thing_classes=[c["name"] for c in categories],
                                          thing_dataset_id_to_contiguous_id=id_map)
    return id_map


def _annotation_to_obj(anno: dict, img: dict, ctx: dict) -> Optional[dict]:
    """One COCO annotation -> a Detectron2 annotation dict, or None (counted in ctx["skips"])."""
    where = f"{ctx['json_file']}: annotation {anno['id']} (image {img['id']})"
    if anno.get("ignore", 0) != 0:
        raise ValueError(f"{where}: the 'ignore' field is not supported; remove those annotations or use 'iscrowd'")
    obj = {key: anno[key] for key in _ANNOTATION_KEYS if key in anno}
    obj["bbox"] = _check_bbox(anno["bbox"], where)
    if "iscrowd" in obj and obj["iscrowd"] not in (0, 1):
        raise ValueError(f"{where}: 'iscrowd' must be 0 or 1, got {obj['iscrowd']!r}")
    category_id = anno["category_id"]
    if category_id not in ctx["categories"]:
        raise ValueError(f"{where}: category_id {category_id!r} is not in the file's 'categories' "
                         f"(ids {sorted(ctx['categories'])[:20]})")
    reason = _box_is_unusable(obj["bbox"], img["height"], img["width"])
    if reason:
        ctx["skips"].add(reason, anno["id"])
        return None

    segm = anno.get("segmentation")
    if isinstance(segm, dict):
        obj["segmentation"] = _convert_rle(segm, img["height"], img["width"], where)
    elif isinstance(segm, list) and segm:
        polygons = _valid_polygons(segm, where)
        if not polygons:
            ctx["skips"].add("without a valid polygon (fewer than 3 points or an odd coordinate count)", anno["id"])
            return None
        obj["segmentation"] = polygons
    elif segm not in (None, []):
        raise ValueError(f"{where}: 'segmentation' must be a list of polygons or an RLE dict, got "
                         f"{type(segm).__name__}")

    if anno.get("keypoints"):
        obj["keypoints"] = _convert_keypoints(anno["keypoints"], ctx["categories"][category_id], where)
    elif "keypoints" in obj:
        del obj["keypoints"]
    for key in ctx["extra_keys"]:
        if key in anno:
            obj[key] = anno[key]
    obj["bbox_mode"] = BoxMode.XYWH_ABS
    if ctx["id_map"] is not None:
        obj["category_id"] = ctx["id_map"][category_id]
    return obj


def load_coco_json(json_file: str, image_root: str, dataset_name: Optional[str] = None,
                   extra_annotation_keys: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Load a COCO instances / person-keypoints JSON file into Detectron2's dataset format.

    Args:
        json_file (str): the COCO annotation file.
        image_root (str): the folder the file's image "file_name"s are relative to.
        dataset_name (str or None): when given, the categories are mapped to contiguous ids
            0..C-1 (sorted by dataset id) and the metadata of `dataset_name` receives
            `thing_classes` and `thing_dataset_id_to_contiguous_id`. When None, category ids
            are left as in the file.
        extra_annotation_keys (list[str] or None): more per-annotation fields to copy as they
            are (e.g. DensePose's).

    Returns:
        list[dict], one per image sorted by image id: "file_name", "height", "width",
        "image_id" and "annotations", a list of dicts with "bbox" (XYWH_ABS), "bbox_mode",
        "category_id", "iscrowd" (when in the file), "segmentation" (list of polygons, or a
        compressed RLE dict), "keypoints" ([x, y, v] * K, x and y shifted by +0.5 to pixel
        centres). Images are not opened.
    """
    dataset = _read_json(json_file)
    if not isinstance(dataset, dict) or "images" not in dataset:
        raise ValueError(f"{json_file}: not a COCO annotation file: expected a dict with an 'images' list")
    _check_images(json_file, dataset["images"])
    _check_categories(json_file, dataset.setdefault("categories", []))
    annotations = dataset.setdefault("annotations", [])
    _check_annotation_fields(json_file, annotations)
    _check_unique_annotation_ids(json_file, annotations)
    coco_api = _coco_api(dataset)

    id_map = None
    if dataset_name is not None and (dataset["categories"] or annotations):
        id_map = _category_metadata(json_file, dataset["categories"], dataset_name)
    ctx = {
        "json_file": json_file,
        "id_map": id_map,
        # category id -> number of keypoints it names (None: no keypoint names in the file)
        "categories": {c["id"]: len(c["keypoints"]) if c.get("keypoints") else None for c in dataset["categories"]},
        "extra_keys": list(extra_annotation_keys or []),
        "skips": _SkipLog(),
    }

    records = []
    for image_id in sorted(coco_api.imgs):
        img = coco_api.imgs[image_id]
        objs = [_annotation_to_obj(anno, img, ctx) for anno in coco_api.imgToAnns[image_id]]
        records.append({
            "file_name": os.path.join(image_root, img["file_name"]),
            "height": img["height"],
            "width": img["width"],
            "image_id": image_id,
            "annotations": [obj for obj in objs if obj is not None],
        })

    for ann in annotations:
        if ann["image_id"] not in coco_api.imgs:
            ctx["skips"].add("of images not listed in 'images'", ann["id"])
    ctx["skips"].report(json_file, len(annotations))
    if annotations and ctx["skips"].total() == len(annotations):
        raise ValueError(f"{json_file}: every one of its {len(annotations)} annotations is unusable (see the "
                         "warning above); refusing to return a dataset without annotations")
    logger.info(f"Loaded {len(records)} images in COCO format from {json_file}")
    return records


# ----------------------------------------------------------------------- semantic segmentation
def _file_key(folder: str, path: str) -> Any:
    """The relative path of `path` in `folder` without extension (an int when it is one)."""
    key = os.path.splitext(os.path.normpath(os.path.relpath(path, start=folder)))[0]
    try:
        return int(key)
    except ValueError:
        return key


def _list_files(folder: str, ext: str) -> Dict[Any, str]:
    files = [os.path.join(folder, f) for f in PathManager.ls(folder) if f.endswith(ext)]
    return {_file_key(folder, f): f for f in files}


def load_sem_seg(gt_root: str, image_root: str, gt_ext: str = "png", image_ext: str = "jpg") -> List[Dict[str, Any]]:
    """Pair the images of `image_root` with the label images of `gt_root` by file name.

    Files are matched on their name without extension ("12.jpg" with "12.png"). Each label
    image holds one class id per pixel. When the two folders hold different sets of names,
    the names in both are used and the difference is reported.

    Returns:
        list[dict] sorted by name, each with "file_name" and "sem_seg_file_name". No file is
        opened.
    """
    if not PathManager.isdir(gt_root):
        raise FileNotFoundError(f"load_sem_seg: the ground-truth folder {gt_root} does not exist")
    if not PathManager.isdir(image_root):
        raise FileNotFoundError(f"load_sem_seg: the image folder {image_root} does not exist")
    images = _list_files(image_root, image_ext)
    labels = _list_files(gt_root, gt_ext)
    if not labels:
        raise FileNotFoundError(f"load_sem_seg: no *{gt_ext} ground-truth files in {gt_root}")
    common = set(images) & set(labels)
    if len(common) != len(images) or len(common) != len(labels):
        logger.warning(f"load_sem_seg: {image_root} has {len(images)} *{image_ext} images and {gt_root} "
                       f"{len(labels)} *{gt_ext} labels; using the {len(common)} names found in both")
    if not common:
        raise FileNotFoundError(f"load_sem_seg: no image in {image_root} (*{image_ext}) has a label of the same "
                                f"name in {gt_root} (*{gt_ext})")
    keys = sorted(common, key=lambda k: (isinstance(k, str), k))
    logger.info(f"Loaded {len(keys)} images with semantic segmentation from {image_root}")
    return [{"file_name": images[k], "sem_seg_file_name": labels[k]} for k in keys]


# ----------------------------------------------------------------------------- registering
def register_coco_instances(name: str, metadata: Dict[str, Any], json_file: str, image_root: str) -> None:
    """Register a COCO-format instances / keypoints dataset as `name`. Nothing is read now.

    Args:
        name (str): e.g. "coco_2017_train".
        metadata (dict): extra metadata (may be empty).
        json_file (str): the COCO annotation file.
        image_root (str): the folder its image file names are relative to.
    """
    if not isinstance(name, str):
        raise TypeError(f"register_coco_instances: name must be a str, got {type(name).__name__}")
    for arg, value in (("json_file", json_file), ("image_root", image_root)):
        if not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"register_coco_instances({name!r}): {arg} must be a path, got {type(value).__name__}")
    DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata)


# ------------------------------------------------------------------------------ converting
def _segmentation_area(segm: Any, where: str) -> float:
    import pycocotools.mask as mask_util

    if isinstance(segm, list):
        return float(sum(polygon_area(np.asarray(p[0::2], dtype=np.float64), np.asarray(p[1::2], dtype=np.float64))
                         for p in segm))
    if isinstance(segm, dict):
        return float(mask_util.area(segm))
    raise TypeError(f"{where}: cannot compute the area of a segmentation of type {type(segm).__name__}; "
                    "expected polygons (list) or RLE (dict)")


def _to_coco_annotation(annotation: Dict[str, Any], ann_id: int, image_id: Any, reverse_id_map) -> Dict[str, Any]:
    where = f"image {image_id!r}"
    bbox = annotation["bbox"]
    mode = BoxMode(annotation["bbox_mode"])
    if mode == BoxMode.XYWHA_ABS:
        bbox = list(bbox)
        area = float(bbox[2] * bbox[3])
    else:
        bbox = BoxMode.convert(list(bbox), mode, BoxMode.XYWH_ABS)
        area = float(bbox[2] * bbox[3])
    coco = {
        "id": ann_id,
        "image_id": image_id,
        "bbox": [round(float(v), 3) for v in bbox],
        "category_id": int(reverse_id_map(annotation["category_id"])),
        "iscrowd": int(annotation.get("iscrowd", 0)),
    }
    if "segmentation" in annotation:
        segm = annotation["segmentation"]
        area = _segmentation_area(segm, where)
        if isinstance(segm, dict) and isinstance(segm.get("counts"), bytes):
            segm = dict(segm, counts=segm["counts"].decode("ascii"))
        coco["segmentation"] = segm
    coco["area"] = area
    if "keypoints" in annotation:
        keypoints = [float(v) - 0.5 if i % 3 != 2 else v for i, v in enumerate(annotation["keypoints"])]
        coco["keypoints"] = keypoints
        coco["num_keypoints"] = annotation.get("num_keypoints", sum(1 for v in keypoints[2::3] if v > 0))
    return coco


def convert_to_coco_dict(dataset_name: str) -> Dict[str, Any]:
    """The registered dataset `dataset_name` as a COCO-format dict (for COCO's evaluation API).

    Category ids go back to the dataset's own ids when the metadata has
    `thing_dataset_id_to_contiguous_id`; keypoints get their +0.5 removed; boxes are written
    XYWH_ABS (XYWHA_ABS boxes are kept as they are); areas come from the segmentation when
    there is one (polygon area or RLE pixel count), else from the box.
    """
    dataset_dicts = DatasetCatalog.get(dataset_name)
    metadata = MetadataCatalog.get(dataset_name)
    if hasattr(metadata, "thing_dataset_id_to_contiguous_id"):
        reverse = {v: k for k, v in metadata.thing_dataset_id_to_contiguous_id.items()}
        reverse_id_map = reverse.__getitem__
        categories = [{"id": reverse[i], "name": name} for i, name in enumerate(metadata.thing_classes)]
    else:
        reverse_id_map = lambda contiguous_id: contiguous_id  # noqa: E731
        categories = [{"id": i, "name": name} for i, name in enumerate(metadata.thing_classes)]

    images, annotations = [], []
    for record in dataset_dicts:
        image_id = record.get("image_id", record["file_name"])
        images.append({"id": image_id, "width": int(record["width"]), "height": int(record["height"]),
                       "file_name": str(record["file_name"])})
        for annotation in record.get("annotations", []):
            annotations.append(_to_coco_annotation(annotation, len(annotations) + 1, image_id, reverse_id_map))
    logger.info(f"Converted dataset {dataset_name!r} to COCO format: {len(images)} images, "
                f"{len(annotations)} annotations")
    coco_dict = {
        "info": {"date_created": str(datetime.datetime.now()),
                 "description": f"dataset {dataset_name} converted to COCO format by detzoo"},
        "images": images,
        "categories": categories,
        "licenses": None,
    }
    if annotations:
        coco_dict["annotations"] = annotations
    return coco_dict


def convert_to_coco_json(dataset_name: str, output_file: str, allow_cached: bool = True) -> None:
    """Write `convert_to_coco_dict(dataset_name)` to `output_file`.

    With `allow_cached`, an existing `output_file` is reused (a warning says so). Safe when
    several processes call it at once: the file is written under a lock, to a temporary name
    first.
    """
    PathManager.mkdirs(os.path.dirname(output_file) or ".")
    with file_lock(output_file):
        if PathManager.exists(output_file) and allow_cached:
            logger.warning(f"Using the cached COCO-format annotations of {dataset_name!r} in {output_file}; "
                           "delete the file (or pass allow_cached=False) to convert again")
            return
        coco_dict = convert_to_coco_dict(dataset_name)
        logger.info(f"Caching the COCO-format annotations of {dataset_name!r} in {output_file}")
        tmp_file = output_file + ".tmp"
        with PathManager.open(tmp_file, "w") as f:
            json.dump(coco_dict, f)
        shutil.move(tmp_file, output_file)
