"""Cityscapes "fine" annotations (leftImg8bit/ images, gtFine/ labels) -> Detectron2's list[dict].

Class definitions (ids, train ids, which classes have instances) come from cityscapesScripts'
helpers/labels.py (`pip install cityscapesscripts`).

Instances are read either from the `*_gtFine_instanceIds.png` files or from the
`*_gtFine_polygons.json` files. detzoo rasterizes the JSON polygons exactly as
cityscapesScripts' json2instanceImg.py does (in file order, later objects covering earlier
ones) and then traces the visible part of each instance, so both sources give the same masks
and overlapping polygons are resolved like the official instanceIds.png. (Detectron2 resolves
the overlaps with polygon geometry, which needs shapely.)
"""
import json
import logging
import multiprocessing as mp
import os
from typing import Any, Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw

from detzoo.structures import BoxMode
from detzoo.utils.comm import get_world_size
from detzoo.utils.file_io import PathManager

__all__ = ["load_cityscapes_instances", "load_cityscapes_semantic"]

logger = logging.getLogger(__name__)

_IMAGE_SUFFIX = "leftImg8bit.png"


def _labels():
    try:
        from cityscapesscripts.helpers import labels
    except ImportError as e:
        raise ImportError("the Cityscapes loaders need cityscapesScripts' label definitions: "
                          "pip install cityscapesscripts") from e
    return labels


def _get_cityscapes_files(image_dir: str, gt_dir: str) -> List[Tuple[str, str, str, str]]:
    """(image, instanceIds.png, labelIds.png, polygons.json) of every image, sorted."""
    if not PathManager.isdir(image_dir):
        raise FileNotFoundError(f"Cityscapes image folder {image_dir} does not exist")
    files = []
    cities = sorted(PathManager.ls(image_dir))
    for city in cities:
        for basename in sorted(PathManager.ls(os.path.join(image_dir, city))):
            if not basename.endswith(_IMAGE_SUFFIX):
                raise ValueError(f"{os.path.join(image_dir, city, basename)}: not a Cityscapes image name "
                                 f"(expected *_{_IMAGE_SUFFIX})")
            prefix = os.path.join(gt_dir, city, basename[: -len(_IMAGE_SUFFIX)])
            files.append((os.path.join(image_dir, city, basename), prefix + "gtFine_instanceIds.png",
                          prefix + "gtFine_labelIds.png", prefix + "gtFine_polygons.json"))
    if not files:
        raise FileNotFoundError(f"no Cityscapes images (*_{_IMAGE_SUFFIX}) in the city folders of {image_dir}")
    logger.info(f"{len(cities)} cities, {len(files)} images found in {image_dir}")
    return files


def _read_polygons_json(json_file: str) -> Dict[str, Any]:
    with PathManager.open(json_file, "r") as f:
        try:
            annotation = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{json_file}: not a valid JSON file ({e})") from e
    for key in ("imgHeight", "imgWidth"):
        if not isinstance(annotation.get(key), int) or annotation[key] <= 0:
            raise ValueError(f"{json_file}: '{key}' must be a positive int, got {annotation.get(key)!r}")
    if not isinstance(annotation.get("objects"), list):
        raise ValueError(f"{json_file}: 'objects' must be a list")
    return annotation


def _rasterize_instances(annotation: Dict[str, Any], json_file: str) -> np.ndarray:
    """The instanceIds image (int32, H x W) that cityscapesScripts' json2instanceImg draws."""
    labels = _labels()
    image = Image.new("I", (annotation["imgWidth"], annotation["imgHeight"]), labels.name2label["unlabeled"].id)
    drawer = ImageDraw.Draw(image)
    num_instances = {}
    for index, obj in enumerate(annotation["objects"]):
        if obj.get("deleted"):
            continue
        name, is_group = obj.get("label"), False
        if name not in labels.name2label and isinstance(name, str) and name.endswith("group"):
            name, is_group = name[: -len("group")], True
        if name not in labels.name2label:
            raise ValueError(f"{json_file}: object {index} has the unknown label {obj.get('label')!r}")
        polygon = obj.get("polygon")
        if not isinstance(polygon, list) or not all(isinstance(p, list) and len(p) == 2 for p in polygon):
            raise ValueError(f"{json_file}: object {index} ({obj['label']}): 'polygon' must be a list of [x, y]")
        label = labels.name2label[name]
        pixel_id = label.id
        if label.hasInstances and not is_group:
            pixel_id = label.id * 1000 + num_instances.get(name, 0)
            num_instances[name] = num_instances.get(name, 0) + 1
        if pixel_id < 0 or len(polygon) < 2:  # negative ids (license plate) are never drawn
            continue
        drawer.polygon([(p[0], p[1]) for p in polygon], fill=pixel_id)
    return np.asarray(image, dtype=np.int32)


def _mask_to_polygons(mask: np.ndarray) -> List[List[float]]:
    """Outlines of the parts of a binary mask (H x W), along the pixel edges, in continuous
    coordinates; rasterizing them again gives back the mask (holes are not kept)."""
    import cv2

    h, w = mask.shape
    # Pixel corners as a (H + 1) x (W + 1) grid: a corner is set when a pixel it touches is.
    corners = np.zeros((h + 1, w + 1), dtype=np.uint8)
    for dy in (0, 1):
        for dx in (0, 1):
            corners[dy:dy + h, dx:dx + w] |= mask.astype(np.uint8)
    contours = cv2.findContours(corners, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[-2]
    return [c.reshape(-1).astype(np.float64).tolist() for c in contours if len(c) >= 3]


def _instances_from_id_image(instance_ids: np.ndarray, to_polygons: bool) -> List[Dict[str, Any]]:
    """Annotations (with Cityscapes label ids as category_id) of the instance classes.

    Pixel values: label_id * 1000 + k for instance k, label_id alone for crowd ("group")
    regions and for classes without instances.
    """
    import pycocotools.mask as mask_util

    labels = _labels()
    annotations = []
    for pixel_id in np.unique(instance_ids[instance_ids >= 24]):  # ids < 24 are classes without instances
        label = labels.id2label.get(int(pixel_id // 1000 if pixel_id >= 1000 else pixel_id))
        if label is None or not label.hasInstances or label.ignoreInEval:
            continue
        mask = (instance_ids == pixel_id).astype(np.uint8)
        ys, xs = np.nonzero(mask)
        if xs.min() == xs.max() or ys.min() == ys.max():
            continue  # one pixel row or column: no area to learn from
        annotation = {"iscrowd": int(pixel_id < 1000), "category_id": label.id,
                      "bbox": [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)],
                      "bbox_mode": BoxMode.XYXY_ABS}
        if to_polygons:
            polygons = _mask_to_polygons(mask)
            if not polygons:
                continue
            annotation["segmentation"] = polygons
        else:
            annotation["segmentation"] = mask_util.encode(np.asfortranarray(mask))
        annotations.append(annotation)
    return annotations


def _cityscapes_files_to_dict(files: Tuple[str, str, str, str], from_json: bool, to_polygons: bool) -> Dict[str, Any]:
    image_file, instance_file, _, json_file = files
    if from_json:
        instance_ids = _rasterize_instances(_read_polygons_json(json_file), json_file)
    else:
        with PathManager.open(instance_file, "rb") as f:
            instance_ids = np.asarray(Image.open(f), dtype=np.int32)
    return {
        "file_name": image_file,
        "image_id": os.path.basename(image_file),
        "height": instance_ids.shape[0],
        "width": instance_ids.shape[1],
        "annotations": _instances_from_id_image(instance_ids, to_polygons),
    }


def _parallel_map(func, items: List[Any]) -> List[Any]:
    # A process pool pays off only for real splits (thousands of images).
    workers = min(max(mp.cpu_count() // get_world_size() // 2, 1), len(items) // 64)
    if workers <= 1:
        return [func(item) for item in items]
    with mp.Pool(processes=workers) as pool:
        return pool.map(func, items, chunksize=16)


class _ToDict:
    """Picklable per-file conversion for the pool."""

    def __init__(self, from_json: bool, to_polygons: bool):
        self.from_json, self.to_polygons = from_json, to_polygons

    def __call__(self, files):
        return _cityscapes_files_to_dict(files, self.from_json, self.to_polygons)


def load_cityscapes_instances(image_dir: str, gt_dir: str, from_json: bool = True,
                              to_polygons: bool = True) -> List[Dict[str, Any]]:
    """Load Cityscapes instance annotations.

    Args:
        image_dir (str): e.g. "cityscapes/leftImg8bit/train" (one folder per city).
        gt_dir (str): e.g. "cityscapes/gtFine/train".
        from_json (bool): read the polygons JSON files (True) or the instanceIds PNGs.
        to_polygons (bool): segmentation as polygons (COCO's format) or as compressed RLE.

    Returns:
        list[dict] with "file_name", "image_id" (the image's base name), "height", "width"
        and "annotations": "bbox" (XYXY_ABS, the pixel extent), "bbox_mode", "category_id"
        (0..7, over the 8 evaluated instance classes), "iscrowd" (group regions),
        "segmentation". Only the instance classes that are evaluated are kept.
    """
    files = _get_cityscapes_files(image_dir, gt_dir)
    logger.info("Preprocessing Cityscapes annotations ...")
    records = _parallel_map(_ToDict(from_json, to_polygons), files)
    labels = _labels()
    thing_labels = [label for label in labels.labels if label.hasInstances and not label.ignoreInEval]
    contiguous_id = {label.id: i for i, label in enumerate(thing_labels)}
    for record in records:
        for annotation in record["annotations"]:
            annotation["category_id"] = contiguous_id[annotation["category_id"]]
    logger.info(f"Loaded {len(records)} images from {image_dir}")
    return records


def load_cityscapes_semantic(image_dir: str, gt_dir: str) -> List[Dict[str, Any]]:
    """Pair Cityscapes images with their `*_gtFine_labelTrainIds.png` (train ids 0..18, 255 =
    ignore), made by cityscapesScripts' preparation/createTrainIdLabelImgs.py.

    Returns:
        list[dict] with "file_name", "sem_seg_file_name", "height", "width" (the last two from
        the polygons JSON).
    """
    records = []
    for image_file, _, label_file, json_file in _get_cityscapes_files(image_dir, gt_dir):
        annotation = _read_polygons_json(json_file)
        records.append({
            "file_name": image_file,
            "sem_seg_file_name": label_file.replace("labelIds", "labelTrainIds"),
            "height": annotation["imgHeight"],
            "width": annotation["imgWidth"],
        })
    if not PathManager.isfile(records[0]["sem_seg_file_name"]):
        raise FileNotFoundError(f"{records[0]['sem_seg_file_name']} does not exist: create the *_labelTrainIds.png "
                                "files with cityscapesscripts/preparation/createTrainIdLabelImgs.py")
    return records
