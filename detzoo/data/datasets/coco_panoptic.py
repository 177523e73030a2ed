"""COCO panoptic segmentation: the panoptic PNG + JSON format, registered in Detectron2's two
ways.

"standard" (`register_coco_panoptic`, used by Panoptic-DeepLab): each record points to the
panoptic PNG (pixel id = R + 256 * G + 256^2 * B) and lists its segments, with category ids
made contiguous over things and stuff.

"separated" (`register_coco_panoptic_separated`, used by Panoptic FPN): instances come from the
COCO instances JSON (polygons), semantic labels from stuff-only PNGs in which every thing pixel
is class 0 and the stuff classes are 1..S.
"""
import copy
import json
import os
from typing import Any, Dict, List, Optional

from detzoo.utils.file_io import PathManager

from ..catalog import DatasetCatalog, MetadataCatalog
from .coco import load_coco_json, load_sem_seg

__all__ = ["load_coco_panoptic_json", "register_coco_panoptic", "register_coco_panoptic_separated",
           "merge_to_panoptic"]


def _convert_segment(segment: Any, meta: Dict[str, Any], where: str) -> Dict[str, Any]:
    if not isinstance(segment, dict) or "id" not in segment or "category_id" not in segment:
        raise ValueError(f"{where}: each of 'segments_info' must be a dict with 'id' and 'category_id', "
                         f"got {segment!r}")
    segment = dict(segment)
    category_id = segment["category_id"]
    things, stuff = meta["thing_dataset_id_to_contiguous_id"], meta["stuff_dataset_id_to_contiguous_id"]
    if category_id in things:
        segment["category_id"], segment["isthing"] = things[category_id], True
    elif category_id in stuff:
        segment["category_id"], segment["isthing"] = stuff[category_id], False
    else:
        raise ValueError(f"{where}: segment {segment['id']} has category_id {category_id}, which is neither a thing "
                         f"nor a stuff category of the metadata")
    return segment


def load_coco_panoptic_json(json_file: str, image_dir: str, gt_dir: str, meta: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Load a COCO panoptic JSON.

    Args:
        json_file (str): e.g. "coco/annotations/panoptic_train2017.json".
        image_dir (str): the images, e.g. "coco/train2017"; image i is the panoptic PNG's name
            with the extension ".jpg".
        gt_dir (str): the panoptic PNGs, e.g. "coco/panoptic_train2017".
        meta (dict): holds "thing_dataset_id_to_contiguous_id" and
            "stuff_dataset_id_to_contiguous_id".

    Returns:
        list[dict] with "file_name", "image_id", "pan_seg_file_name" and "segments_info" (a
        list of dicts: "id" (the PNG's pixel id), "category_id" (contiguous), "isthing",
        "iscrowd", "bbox", "area" as in the file). No PNG or image is opened.
    """
    with PathManager.open(json_file, "r") as f:
        try:
            json_info = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{json_file}: not a valid JSON file ({e})") from e
    if not isinstance(json_info, dict) or not isinstance(json_info.get("annotations"), list):
        raise ValueError(f"{json_file}: not a COCO panoptic file: expected a dict with an 'annotations' list")
    records = []
    for index, ann in enumerate(json_info["annotations"]):
        if not isinstance(ann, dict) or not all(k in ann for k in ("image_id", "file_name", "segments_info")):
            raise ValueError(f"{json_file}: annotations[{index}] needs 'image_id', 'file_name' and 'segments_info'")
        where = f"{json_file}: image {ann['image_id']}"
        if not isinstance(ann["segments_info"], list):
            raise ValueError(f"{where}: 'segments_info' must be a list")
        records.append({
            "file_name": os.path.join(image_dir, os.path.splitext(ann["file_name"])[0] + ".jpg"),
            "image_id": int(ann["image_id"]) if str(ann["image_id"]).isdigit() else ann["image_id"],
            "pan_seg_file_name": os.path.join(gt_dir, ann["file_name"]),
            "segments_info": [_convert_segment(s, meta, where) for s in ann["segments_info"]],
        })
    if not records:
        raise ValueError(f"{json_file}: has no annotations, so the panoptic dataset would be empty")
    return records


def register_coco_panoptic(name: str, metadata: Dict[str, Any], image_root: str, panoptic_root: str,
                           panoptic_json: str, instances_json: Optional[str] = None) -> None:
    """Register the "standard" COCO panoptic dataset `name` (e.g. "coco_2017_train_panoptic").

    Args:
        metadata (dict): must hold thing/stuff_dataset_id_to_contiguous_id (see
            builtin_meta's "coco_panoptic_standard").
        image_root, panoptic_root (str): the images and the panoptic PNGs.
        panoptic_json (str): the panoptic JSON.
        instances_json (str or None): the matching instances JSON (kept as metadata "json_file").
    """
    DatasetCatalog.register(name, lambda: load_coco_panoptic_json(panoptic_json, image_root, panoptic_root, metadata))
    MetadataCatalog.get(name).set(
        panoptic_root=panoptic_root,
        image_root=image_root,
        panoptic_json=panoptic_json,
        json_file=instances_json,
        evaluator_type="coco_panoptic_seg",
        ignore_label=255,
        label_divisor=1000,
        **metadata,
    )


def register_coco_panoptic_separated(name: str, metadata: Dict[str, Any], image_root: str, panoptic_root: str,
                                     panoptic_json: str, sem_seg_root: str, instances_json: str) -> None:
    """Register the "separated" COCO panoptic dataset as `name + "_separated"`, and its
    semantic part alone as `name + "_stuffonly"`.

    Args:
        name (str): e.g. "coco_2017_train_panoptic".
        metadata (dict): e.g. builtin_meta's "coco_panoptic_separated".
        image_root (str): the images.
        panoptic_root, panoptic_json (str): the panoptic PNGs and JSON (for evaluation).
        sem_seg_root (str): the stuff-only PNGs (things = 0, stuff = 1..S, 255 = ignore).
        instances_json (str): the COCO instances JSON of the same images.
    """
    panoptic_name = name + "_separated"
    DatasetCatalog.register(panoptic_name, lambda: merge_to_panoptic(
        load_coco_json(instances_json, image_root, panoptic_name), load_sem_seg(sem_seg_root, image_root)))
    MetadataCatalog.get(panoptic_name).set(
        panoptic_root=panoptic_root,
        image_root=image_root,
        panoptic_json=panoptic_json,
        sem_seg_root=sem_seg_root,
        json_file=instances_json,
        evaluator_type="coco_panoptic_seg",
        ignore_label=255,
        **metadata,
    )

    semantic_name = name + "_stuffonly"
    DatasetCatalog.register(semantic_name, lambda: load_sem_seg(sem_seg_root, image_root))
    MetadataCatalog.get(semantic_name).set(
        sem_seg_root=sem_seg_root,
        image_root=image_root,
        evaluator_type="sem_seg",
        ignore_label=255,
        **metadata,
    )


def merge_to_panoptic(detection_dicts: List[Dict[str, Any]],
                      sem_seg_dicts: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Merge instance records and semantic records of the same images (matched by "file_name").

    Returns:
        one dict per record of `detection_dicts`, updated with the keys of its semantic record.
    """
    sem_seg_by_file = {record["file_name"]: record for record in sem_seg_dicts}
    if not sem_seg_by_file:
        raise ValueError("merge_to_panoptic: there are no semantic-segmentation records to merge")
    merged = []
    for det in detection_dicts:
        if det["file_name"] not in sem_seg_by_file:
            raise ValueError(f"merge_to_panoptic: image {det['file_name']} has instance annotations but no "
                             "semantic-segmentation label")
        record = copy.copy(det)
        record.update(sem_seg_by_file[det["file_name"]])
        merged.append(record)
    return merged
