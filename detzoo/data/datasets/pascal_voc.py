"""PASCAL VOC detection (VOCdevkit/VOC20xx: Annotations/*.xml, ImageSets/Main/<split>.txt,
JPEGImages/*.jpg) -> Detectron2's list[dict]."""
import os
import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Sequence

from detzoo.structures import BoxMode
from detzoo.utils.file_io import PathManager

from ..catalog import DatasetCatalog, MetadataCatalog

__all__ = ["load_voc_instances", "register_pascal_voc", "CLASS_NAMES"]

# The 20 VOC classes, in the order of the VOC devkit (= contiguous ids 0..19).
CLASS_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def _read_split(dirname: str, split: str) -> List[str]:
    split_file = os.path.join(dirname, "ImageSets", "Main", split + ".txt")
    if not PathManager.isfile(split_file):
        raise FileNotFoundError(f"PASCAL VOC split file {split_file} does not exist")
    with PathManager.open(split_file) as f:
        return [line.strip() for line in f if line.strip()]


def _text(node: ET.Element, path: str, where: str) -> str:
    child = node.find(path)
    if child is None or child.text is None:
        raise ValueError(f"{where}: missing <{path}>")
    return child.text.strip()


def _number(node: ET.Element, path: str, where: str) -> float:
    text = _text(node, path, where)
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where}: <{path}> must be a number, got {text!r}") from None


def _voc_object(obj: ET.Element, index: int, class_names: Sequence[str], where: str) -> Dict[str, Any]:
    where = f"{where}: object {index}"
    name = _text(obj, "name", where)
    if name not in class_names:
        raise ValueError(f"{where}: class {name!r} is not one of the dataset's classes {list(class_names)}")
    x0, y0, x1, y1 = (_number(obj, f"bndbox/{k}", where) for k in ("xmin", "ymin", "xmax", "ymax"))
    # VOC boxes are 1-based inclusive pixel indices: (1, W) spans the whole image, which is
    # (0, W) in continuous coordinates.
    x0, y0 = x0 - 1.0, y0 - 1.0
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"{where}: box (xmin, ymin, xmax, ymax) = ({x0 + 1}, {y0 + 1}, {x1}, {y1}) is empty")
    # "difficult" objects are kept for training, as Detectron2 does (they do not hurt accuracy).
    return {"category_id": list(class_names).index(name), "bbox": [x0, y0, x1, y1], "bbox_mode": BoxMode.XYXY_ABS}


def load_voc_instances(dirname: str, split: str, class_names: Sequence[str] = CLASS_NAMES) -> List[Dict[str, Any]]:
    """Load the VOC detection annotations of one split.

    Args:
        dirname (str): holds "Annotations", "ImageSets", "JPEGImages" (e.g. "VOC2007").
        split (str): "train", "val", "trainval" or "test".
        class_names (list[str]): the classes; an object of another class is an error.

    Returns:
        list[dict] with "file_name", "image_id" (the VOC id, a str), "height", "width" and
        "annotations" ("bbox" XYXY_ABS, "bbox_mode", "category_id").
    """
    records = []
    for file_id in _read_split(dirname, split):
        anno_file = os.path.join(dirname, "Annotations", file_id + ".xml")
        with PathManager.open(anno_file) as f:
            try:
                tree = ET.parse(f)
            except ET.ParseError as e:
                raise ValueError(f"{anno_file}: not a valid XML file ({e})") from e
        records.append({
            "file_name": os.path.join(dirname, "JPEGImages", file_id + ".jpg"),
            "image_id": file_id,
            "height": int(_number(tree, "size/height", anno_file)),
            "width": int(_number(tree, "size/width", anno_file)),
            "annotations": [_voc_object(obj, i, class_names, anno_file)
                            for i, obj in enumerate(tree.findall("object"))],
        })
    return records


def register_pascal_voc(name: str, dirname: str, split: str, year: int,
                        class_names: Sequence[str] = CLASS_NAMES) -> None:
    """Register the VOC `split` of `dirname` as `name`. Nothing is read now."""
    DatasetCatalog.register(name, lambda: load_voc_instances(dirname, split, class_names))
    MetadataCatalog.get(name).set(thing_classes=list(class_names), dirname=dirname, year=year, split=split)
