"""LVIS-format datasets (COCO-like JSON with federated annotations) -> Detectron2's list[dict].

Differences from COCO: image files are found through "coco_url" (".../train2017/x.jpg" ->
image_root/train2017/x.jpg), each image lists the categories known to be absent
("neg_category_ids") and those not exhaustively annotated ("not_exhaustive_category_ids"),
segmentations are always polygons, there is no "iscrowd".

The category list is read from the annotation file (see lvis_v1_categories.py for why). The
file is indexed with the `lvis` package's LVIS class when it is installed, as Detectron2 does,
and by a plain grouping of the JSON otherwise.
"""
import logging
import os
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

from detzoo.structures import BoxMode

from ..catalog import DatasetCatalog, MetadataCatalog, register_lazy_metadata
from . import lvis_v0_5_categories, lvis_v1_categories
from .builtin_meta import _get_coco_instances_meta
from .coco import (
    _box_is_unusable,
    _check_annotation_fields,
    _check_bbox,
    _check_categories,
    _check_unique_annotation_ids,
    _is_int,
    _read_json,
    _SkipLog,
    _valid_polygons,
)

__all__ = ["load_lvis_json", "register_lvis_instances", "get_lvis_instances_meta"]

logger = logging.getLogger(__name__)

_VERSIONS = {"v0.5": lvis_v0_5_categories, "v1": lvis_v1_categories}


def _version_module(dataset_name: str):
    for version, module in _VERSIONS.items():
        if f"lvis_{version}" in dataset_name or dataset_name == version:
            return module
    return None


# ---------------------------------------------------------------------------- metadata
def _metadata_from_categories(categories: List[dict], json_file: str, dataset_name: str = "") -> Dict[str, Any]:
    """thing_classes (first synonym, as Detectron2), thing_dataset_id_to_contiguous_id and,
    when the file counts them, class_image_count ([{"id", "image_count"}], for the federated
    loss)."""
    categories = sorted(categories, key=lambda c: c["id"])
    module = _version_module(dataset_name)
    if module is not None and len(categories) != module.NUM_CATEGORIES:
        logger.warning(f"{json_file}: has {len(categories)} categories, while LVIS {dataset_name} has "
                       f"{module.NUM_CATEGORIES}")
    meta = {"thing_classes": [(c.get("synonyms") or [c["name"]])[0] for c in categories]}
    if categories and all("image_count" in c for c in categories):
        meta["class_image_count"] = [{"id": c["id"], "image_count": c["image_count"]} for c in categories]
    # LVIS's own ids are 1..C, which Detectron2 maps by "id - 1" without a table; the explicit
    # table (the same map for LVIS) also serves LVIS-format files with other ids, and the
    # evaluators use it to map back.
    meta["thing_dataset_id_to_contiguous_id"] = {c["id"]: i for i, c in enumerate(categories)}
    return meta


def _read_metadata(json_file: str, dataset_name: str) -> Dict[str, Any]:
    dataset = _read_json(json_file)
    if not isinstance(dataset, dict):
        raise ValueError(f"{json_file}: not an LVIS annotation file (expected a JSON object)")
    _check_categories(json_file, dataset.get("categories", []))
    return _metadata_from_categories(dataset.get("categories", []), json_file, dataset_name)


def get_lvis_instances_meta(dataset_name: str, json_file: Optional[str] = None) -> Dict[str, Any]:
    """The metadata of an LVIS dataset family ("lvis_v0.5", "lvis_v1", "lvis_v0.5_cocofied").

    The "cocofied" subsets use COCO's 80 classes. For v0.5 and v1 the classes are read from
    `json_file`, by default the release's val file under $DETZOO_DATASETS (a detzoo
    difference: Detectron2 embeds the category list; see lvis_v1_categories.py).

    Returns:
        dict with "thing_classes", and "class_image_count" when the file has image counts.
    """
    if "cocofied" in dataset_name:
        return _get_coco_instances_meta()
    module = _version_module(dataset_name)
    if module is None:
        raise ValueError(f"no built-in LVIS metadata for {dataset_name!r}; expected a name containing "
                         f"{', '.join('lvis_' + v for v in _VERSIONS)}")
    if json_file is None:
        json_file = os.path.join(os.environ.get("DETZOO_DATASETS", "datasets"), module.ANNOTATION_FILES[1])
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"the LVIS categories of {dataset_name!r} are read from its annotation file, and "
                                f"{json_file} does not exist")
    return _read_metadata(json_file, dataset_name)


# ------------------------------------------------------------------------------ loading
def _check_lvis_images(json_file: str, images: Any) -> None:
    if not isinstance(images, list):
        raise ValueError(f"{json_file}: 'images' must be a list, got {type(images).__name__}")
    for index, img in enumerate(images):
        if not isinstance(img, dict) or not _is_int(img.get("id")):
            raise ValueError(f"{json_file}: images[{index}] must be a dict with an int 'id'")
        where = f"{json_file}: image {img['id']}"
        for key in ("height", "width"):
            if not _is_int(img.get(key)) or img[key] <= 0:
                raise ValueError(f"{where}: '{key}' must be a positive int, got {img.get(key)!r}")
        if not isinstance(img.get("coco_url", img.get("file_name")), str):
            raise ValueError(f"{where}: needs a str 'coco_url' (or 'file_name') to locate the image")
        for key in ("not_exhaustive_category_ids", "neg_category_ids"):
            if not isinstance(img.get(key, []), list):
                raise ValueError(f"{where}: '{key}' must be a list of category ids, got {img[key]!r}")


def _index(dataset: dict) -> Tuple[Dict[int, dict], Dict[int, List[dict]]]:
    """image id -> image, image id -> its annotations."""
    try:
        from lvis import LVIS
    except ImportError:
        img_to_anns = defaultdict(list)
        for ann in dataset["annotations"]:
            img_to_anns[ann["image_id"]].append(ann)
        return {img["id"]: img for img in dataset["images"]}, img_to_anns

    class _LVISFromDict(LVIS):
        # The file is already read and checked; index that dict instead of reading it again.
        def _load_json(self, path):
            return dataset

    lvis_api = _LVISFromDict(None)
    return lvis_api.imgs, lvis_api.img_ann_map


def _image_file(image_root: str, img: dict) -> str:
    if "coco_url" in img:
        # 'http://images.cocodataset.org/train2017/000000155379.jpg' -> image_root/train2017/...
        split_folder, file_name = img["coco_url"].split("/")[-2:]
        return os.path.join(image_root, split_folder, file_name)
    return os.path.join(image_root, img["file_name"])


def _lvis_annotation(anno: dict, img: dict, ctx: dict) -> Optional[dict]:
    where = f"{ctx['json_file']}: annotation {anno['id']} (image {img['id']})"
    bbox = _check_bbox(anno["bbox"], where)
    if anno["category_id"] not in ctx["id_map"]:
        raise ValueError(f"{where}: category_id {anno['category_id']!r} is not in the file's 'categories'")
    reason = _box_is_unusable(bbox, img["height"], img["width"])
    if reason:
        ctx["skips"].add(reason, anno["id"])
        return None
    segm = anno.get("segmentation")
    if not isinstance(segm, list) or not segm:
        raise ValueError(f"{where}: LVIS annotations need a non-empty polygon 'segmentation', got {str(segm)[:80]}")
    polygons = _valid_polygons(segm, where)
    if not polygons:
        ctx["skips"].add("without a valid polygon (fewer than 3 points or an odd coordinate count)", anno["id"])
        return None
    obj = {"bbox": bbox, "bbox_mode": BoxMode.XYWH_ABS, "category_id": ctx["id_map"][anno["category_id"]],
           "segmentation": polygons}
    for key in ctx["extra_keys"]:
        obj[key] = anno[key]
    return obj


def load_lvis_json(json_file: str, image_root: str, dataset_name: Optional[str] = None,
                   extra_annotation_keys: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Load an LVIS-format annotation file into Detectron2's dataset format.

    Args:
        json_file (str): the LVIS annotation file.
        image_root (str): the folder holding the split folders of "coco_url" (e.g. "coco/").
        dataset_name (str or None): when given, its metadata receives the file's
            `thing_classes` (COCO's for "cocofied" names) and `class_image_count`.
        extra_annotation_keys (list[str] or None): more per-annotation fields to copy.

    Returns:
        list[dict], one per image sorted by id: "file_name", "height", "width", "image_id",
        "not_exhaustive_category_ids", "neg_category_ids" (dataset ids, as in the file) and
        "annotations" (dicts with "bbox" XYWH_ABS, "bbox_mode", contiguous "category_id",
        "segmentation" polygons).
    """
    dataset = _read_json(json_file)
    if not isinstance(dataset, dict) or "images" not in dataset or "categories" not in dataset:
        raise ValueError(f"{json_file}: not an LVIS annotation file: expected a dict with 'images' and 'categories'")
    _check_lvis_images(json_file, dataset["images"])
    _check_categories(json_file, dataset["categories"])
    annotations = dataset.setdefault("annotations", [])
    _check_annotation_fields(json_file, annotations)
    _check_unique_annotation_ids(json_file, annotations)
    extra_keys = list(extra_annotation_keys or [])
    for ann in annotations:
        missing = [key for key in extra_keys if key not in ann]
        if missing:
            raise ValueError(f"{json_file}: annotation {ann['id']} lacks the extra annotation keys {missing}")

    if dataset_name is not None and "cocofied" in dataset_name:
        meta = _get_coco_instances_meta()
    else:
        meta = _metadata_from_categories(dataset["categories"], json_file, dataset_name or "")
    if dataset_name is not None:
        MetadataCatalog.get(dataset_name).set(**meta)
    ctx = {"json_file": json_file, "id_map": meta["thing_dataset_id_to_contiguous_id"], "extra_keys": extra_keys,
           "skips": _SkipLog()}

    images, img_to_anns = _index(dataset)
    records = []
    for image_id in sorted(images):
        img = images[image_id]
        objs = [_lvis_annotation(anno, img, ctx) for anno in img_to_anns[image_id]]
        records.append({
            "file_name": _image_file(image_root, img),
            "height": img["height"],
            "width": img["width"],
            "not_exhaustive_category_ids": img.get("not_exhaustive_category_ids", []),
            "neg_category_ids": img.get("neg_category_ids", []),
            "image_id": image_id,
            "annotations": [obj for obj in objs if obj is not None],
        })
    for ann in annotations:
        if ann["image_id"] not in images:
            ctx["skips"].add("of images not listed in 'images'", ann["id"])
    ctx["skips"].report(json_file, len(annotations))
    if annotations and ctx["skips"].total() == len(annotations):
        raise ValueError(f"{json_file}: every one of its {len(annotations)} annotations is unusable (see the "
                         "warning above); refusing to return a dataset without annotations")
    logger.info(f"Loaded {len(records)} images in the LVIS format from {json_file}")
    return records


def register_lvis_instances(name: str, metadata: Dict[str, Any], json_file: str, image_root: str) -> None:
    """Register an LVIS-format dataset as `name`. Nothing is read now.

    Args:
        name (str): e.g. "lvis_v1_train".
        metadata (dict): extra metadata (may be empty). Without "thing_classes", the class
            names (and class_image_count) are read from `json_file` when first asked for.
        json_file (str): the LVIS annotation file.
        image_root (str): the folder holding the split folders of "coco_url".
    """
    DatasetCatalog.register(name, lambda: load_lvis_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="lvis", **metadata)
    if "thing_classes" not in metadata:
        register_lazy_metadata(name, ("thing_classes", "class_image_count", "thing_dataset_id_to_contiguous_id"),
                               lambda: _read_metadata(json_file, name))
