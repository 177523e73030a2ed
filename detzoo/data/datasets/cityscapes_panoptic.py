"""Cityscapes panoptic segmentation: the COCO-panoptic-style PNG + JSON that cityscapesScripts'
preparation/createPanopticImgs.py writes into gtFine/, with the labelTrainIds PNGs as
semantic labels.
"""
import json
import logging
import os
from typing import Any, Dict, List

from detzoo.utils.file_io import PathManager

from ..catalog import DatasetCatalog, MetadataCatalog
from .builtin_meta import CITYSCAPES_CATEGORIES

__all__ = ["load_cityscapes_panoptic", "register_all_cityscapes_panoptic"]

logger = logging.getLogger(__name__)

_IMAGE_SUFFIX = "_leftImg8bit.png"

# name -> (image folder, panoptic PNG folder, panoptic JSON), relative to the datasets root.
_RAW_CITYSCAPES_PANOPTIC_SPLITS = {
    "cityscapes_fine_panoptic_train": ("cityscapes/leftImg8bit/train", "cityscapes/gtFine/cityscapes_panoptic_train",
                                       "cityscapes/gtFine/cityscapes_panoptic_train.json"),
    "cityscapes_fine_panoptic_val": ("cityscapes/leftImg8bit/val", "cityscapes/gtFine/cityscapes_panoptic_val",
                                     "cityscapes/gtFine/cityscapes_panoptic_val.json"),
}


def _images_by_id(image_dir: str) -> Dict[str, str]:
    """"city_seq_frame" -> image path."""
    images = {}
    for city in sorted(PathManager.ls(image_dir)):
        for basename in sorted(PathManager.ls(os.path.join(image_dir, city))):
            if not basename.endswith(_IMAGE_SUFFIX):
                raise ValueError(f"{os.path.join(image_dir, city, basename)}: not a Cityscapes image name "
                                 f"(expected *{_IMAGE_SUFFIX})")
            images[basename[: -len(_IMAGE_SUFFIX)]] = os.path.join(image_dir, city, basename)
    return images


def _convert_segment(segment: Dict[str, Any], meta: Dict[str, Any], where: str) -> Dict[str, Any]:
    segment = dict(segment)
    category_id = segment.get("category_id")
    if category_id in meta["thing_dataset_id_to_contiguous_id"]:
        segment["category_id"] = meta["thing_dataset_id_to_contiguous_id"][category_id]
    elif category_id in meta["stuff_dataset_id_to_contiguous_id"]:
        segment["category_id"] = meta["stuff_dataset_id_to_contiguous_id"][category_id]
    else:
        raise ValueError(f"{where}: segment {segment.get('id')} has category_id {category_id!r}, which is not one of "
                         "the 19 evaluated Cityscapes classes")
    return segment


def load_cityscapes_panoptic(image_dir: str, gt_dir: str, gt_json: str, meta: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Load the Cityscapes panoptic annotations.

    Args:
        image_dir (str): e.g. "cityscapes/leftImg8bit/train".
        gt_dir (str): the panoptic PNGs, e.g. "cityscapes/gtFine/cityscapes_panoptic_train".
        gt_json (str): e.g. "cityscapes/gtFine/cityscapes_panoptic_train.json".
        meta (dict): with "thing_dataset_id_to_contiguous_id" and
            "stuff_dataset_id_to_contiguous_id" (Cityscapes label id -> train id).

    Returns:
        list[dict] with "file_name", "image_id" ("city_seq_frame"), "sem_seg_file_name" (the
        labelTrainIds PNG), "pan_seg_file_name" and "segments_info" (contiguous category ids).
    """
    if not PathManager.isfile(gt_json):
        raise FileNotFoundError(f"{gt_json} does not exist: create the panoptic annotations with "
                                "cityscapesscripts/preparation/createPanopticImgs.py")
    with PathManager.open(gt_json, "r") as f:
        json_info = json.load(f)
    images = _images_by_id(image_dir)
    records = []
    for ann in json_info.get("annotations", []):
        where = f"{gt_json}: image {ann.get('image_id')!r}"
        image_file = images.get(ann.get("image_id"))
        if image_file is None:
            raise ValueError(f"{where}: no image {ann.get('image_id')}{_IMAGE_SUFFIX} in {image_dir}")
        sem_seg_file = image_file.replace("leftImg8bit", "gtFine")[: -len(".png")] + "_labelTrainIds.png"
        records.append({
            "file_name": image_file,
            "image_id": ann["image_id"],
            "sem_seg_file_name": sem_seg_file,
            "pan_seg_file_name": os.path.join(gt_dir, ann["file_name"]),
            "segments_info": [_convert_segment(s, meta, where) for s in ann["segments_info"]],
        })
    if not records:
        raise ValueError(f"{gt_json}: has no annotations")
    if not PathManager.isfile(records[0]["sem_seg_file_name"]):
        raise FileNotFoundError(f"{records[0]['sem_seg_file_name']} does not exist: create the *_labelTrainIds.png "
                                "files with cityscapesscripts/preparation/createTrainIdLabelImgs.py")
    return records


def _panoptic_meta() -> Dict[str, Any]:
    # One contiguous id (the train id) per class, things and stuff together; thing_* and
    # stuff_* both list all 19 classes so that the visualizer finds every name.
    names = [c["name"] for c in CITYSCAPES_CATEGORIES]
    colors = [c["color"] for c in CITYSCAPES_CATEGORIES]
    return {
        "thing_classes": names,
        "thing_colors": colors,
        "stuff_classes": list(names),
        "stuff_colors": list(colors),
        "thing_dataset_id_to_contiguous_id": {c["id"]: c["trainId"] for c in CITYSCAPES_CATEGORIES if c["isthing"]},
        "stuff_dataset_id_to_contiguous_id": {c["id"]: c["trainId"] for c in CITYSCAPES_CATEGORIES if not c["isthing"]},
    }


def register_all_cityscapes_panoptic(root: str) -> None:
    """Register cityscapes_fine_panoptic_{train,val} under `root`."""
    meta = _panoptic_meta()
    for name, (image_dir, gt_dir, gt_json) in _RAW_CITYSCAPES_PANOPTIC_SPLITS.items():
        image_dir, gt_dir, gt_json = (os.path.join(root, p) for p in (image_dir, gt_dir, gt_json))
        DatasetCatalog.register(name, lambda x=image_dir, y=gt_dir, z=gt_json: load_cityscapes_panoptic(x, y, z, meta))
        MetadataCatalog.get(name).set(
            panoptic_root=gt_dir,
            image_root=image_dir,
            panoptic_json=gt_json,
            gt_dir=gt_dir.replace("cityscapes_panoptic_", ""),
            evaluator_type="cityscapes_panoptic_seg",
            ignore_label=255,
            label_divisor=1000,
            **meta,
        )
