"""Built-in synthetic datasets, small enough to train and evaluate on a CPU in a test.

Generated on first use, deterministically (seeded numpy, one generator per image), into
$DETZOO_DATASETS/shapes, in the real file formats so the same loaders as for COCO read them:

    shapes_train / shapes_val                  instances of 3 classes: circle, triangle, square
                                               (COCO instances JSON, polygons; JPEG images)
    shapes_keypoints_train / _val              "person" stick figures with the 17 COCO keypoints
    shapes_sem_seg_train / _val                scenes of stuff bands (sky, grass, water) plus the
                                               3 thing classes; one PNG label per image
    shapes_panoptic_train / _val               the same scenes as COCO panoptic PNG + JSON
    shapes_panoptic_{train,val}_separated      Panoptic FPN's view: instances JSON + stuff-only
                                               PNGs where class 0 is "things"
    shapes_panoptic_{train,val}_stuffonly      the stuff-only semantic part alone

The images are made hard enough that AP stays well below 100: objects overlap and occlude
each other (the annotations hold only the visible part), some are small, some share the
color of what lies behind them, backgrounds are textured and noisy, and unannotated
distractor strokes are drawn.

Layout: one folder per (kind, split), e.g. shapes/instances_train/{images/*.jpg,
instances.json, info.json}. A folder is written under a lock into a temporary folder that is
then renamed, so concurrent processes (data-loader workers, several trainings) never see a
half-written dataset; info.json records the generation parameters and a folder made with
other parameters is regenerated.
"""
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from iopath.common.file_io import file_lock

from detzoo.structures import polygon_area

from ..catalog import DatasetCatalog, MetadataCatalog
from .builtin_meta import COCO_PERSON_KEYPOINT_FLIP_MAP, COCO_PERSON_KEYPOINT_NAMES, KEYPOINT_CONNECTION_RULES
from .cityscapes import _mask_to_polygons
from .coco import load_sem_seg, register_coco_instances
from .coco_panoptic import register_coco_panoptic, register_coco_panoptic_separated

__all__ = ["SHAPES_THING_CLASSES", "SHAPES_STUFF_CLASSES", "generate_shapes", "register_all_shapes"]

logger = logging.getLogger(__name__)

SHAPES_THING_CLASSES = ("circle", "triangle", "square")
SHAPES_STUFF_CLASSES = ("sky", "grass", "water")
_THING_IDS = (1, 2, 3)
# Stuff ids do not follow the thing ids, as in COCO, so the id maps are exercised.
_STUFF_IDS = (101, 102, 103)
_THING_COLORS = [[220, 60, 60], [60, 170, 60], [60, 90, 220]]
_STUFF_COLORS = [[135, 190, 235], [90, 160, 70], [40, 90, 160]]
_THINGS_COLOR = [82, 18, 128]  # the "things" class of the separated variant

KINDS = ("instances", "keypoints", "panoptic")
# Images per split. Panoptic scenes cost more to draw (textures, three label PNGs), so
# they are fewer: every kind generates in a few seconds.
DEFAULT_NUM_IMAGES = {"instances": {"train": 300, "val": 50}, "keypoints": {"train": 300, "val": 50},
                      "panoptic": {"train": 200, "val": 50}}
_DEFAULT_SEEDS = {"train": 0, "val": 1}
# Bump when the drawing changes, so that cached folders are regenerated.
_GENERATOR_VERSION = 1
_JPEG_QUALITY = 90


# ------------------------------------------------------------------------------- drawing
def _grain(rng: np.random.Generator, shape: Tuple[int, ...], amplitude: float) -> np.ndarray:
    """Per-pixel noise, uniform in [-amplitude, amplitude] (float32; cheaper than Gaussian)."""
    return (rng.random(shape, dtype=np.float32) - np.float32(0.5)) * np.float32(2 * amplitude)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int, sigma: float, channels: int = 3) -> np.ndarray:
    """Low-frequency noise: a coarse random grid upsampled to (h, w, channels), float32."""
    import cv2

    grid = rng.normal(0.0, sigma, (h // cell + 2, w // cell + 2, channels)).astype(np.float32)
    noise = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return noise.reshape(h, w, channels)


def _coordinates(h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    """Row (h, 1) and column (1, w) pixel coordinates, float32, for broadcasting."""
    return np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]


def _plain_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth blend of four random corner colors, with blotches (float32 h x w x 3)."""
    import cv2

    corners = rng.uniform(20, 235, (2, 2, 3)).astype(np.float32)
    image = cv2.resize(corners, (w, h), interpolation=cv2.INTER_LINEAR)
    image += _smooth_noise(rng, h, w, cell=24, sigma=18.0)
    return image


def _stuff_scene(rng: np.random.Generator, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    """Horizontal bands of sky / grass / water with wavy borders.

    Returns:
        image (float32 h x w x 3), stuff (uint8 h x w, index into SHAPES_STUFF_CLASSES).
    """
    num_bands = int(rng.integers(2, 4))
    classes = [0 if rng.random() < 0.85 else 1]
    for _ in range(num_bands - 1):
        classes.append(int(rng.choice([c for c in (1, 2) if c != classes[-1]])))
    cuts = np.sort(rng.uniform(0.25, 0.8, num_bands - 1)) * h
    yy, xx = _coordinates(h, w)
    stuff = np.full((h, w), classes[0], dtype=np.uint8)
    for cut, cls in zip(cuts, classes[1:]):
        border = cut + rng.uniform(2, 12) * np.sin(2 * np.pi * rng.uniform(0.5, 3) * xx / w + rng.uniform(0, 2 * np.pi))
        stuff[np.broadcast_to(yy >= border, (h, w))] = cls
    image = np.zeros((h, w, 3), dtype=np.float32)
    for cls, texture in enumerate((_sky, _grass, _water)):
        region = stuff == cls
        if region.any():
            np.copyto(image, texture(rng, h, w), where=region[..., None])
    return image, stuff


def _sky(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    top = (np.array([70, 130, 215]) + rng.normal(0, 15, 3)).astype(np.float32)
    horizon = (np.array([200, 220, 240]) + rng.normal(0, 10, 3)).astype(np.float32)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    clouds = np.clip(_smooth_noise(rng, h, w, cell=40, sigma=40.0, channels=1), 0, None)
    return top + t * (horizon - top) + clouds


def _grass(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = (np.array([70, 145, 55]) + rng.normal(0, 15, 3)).astype(np.float32)
    blades = _grain(rng, (h, w, 1), 35.0)
    return base + blades * np.array([0.6, 1.0, 0.5], dtype=np.float32) + _smooth_noise(rng, h, w, cell=16, sigma=12.0)


def _water(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = (np.array([40, 95, 165]) + rng.normal(0, 15, 3)).astype(np.float32)
    yy, xx = _coordinates(h, w)
    ripples = 18 * np.sin(2 * np.pi * yy / np.float32(rng.uniform(5, 11))
                          + 2.5 * np.sin(2 * np.pi * xx / np.float32(rng.uniform(30, 80))))
    return base + ripples[..., None] * np.array([0.5, 0.7, 1.0], dtype=np.float32) + \
        _smooth_noise(rng, h, w, cell=32, sigma=8.0)


def _distractor_strokes(rng: np.random.Generator, image: np.ndarray) -> None:
    """Unannotated clutter: a few random thick polylines, drawn in place."""
    import cv2

    h, w = image.shape[:2]
    for _ in range(int(rng.integers(0, 4))):
        points = np.stack([rng.uniform(0, w, 3), rng.uniform(0, h, 3)], axis=1)
        color = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cv2.polylines(image, [np.round(points).astype(np.int32)], False, color, int(rng.integers(1, 4)))


def _finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Soften the edges, add sensor grain, and quantize to uint8 RGB."""
    import cv2

    image = cv2.GaussianBlur(image.astype(np.float32), (3, 3), 0.8)
    image += _grain(rng, image.shape, 10.0)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _fill_polygon(h: int, w: int, polygon: np.ndarray) -> np.ndarray:
    """The pixels (bool h x w) of `polygon` ((N, 2) continuous x, y), rasterized by the COCO
    API itself, so that the annotation of an unoccluded shape gives back exactly its pixels."""
    import pycocotools.mask as mask_util

    rle = mask_util.frPyObjects([polygon.reshape(-1).tolist()], h, w)
    return mask_util.decode(rle)[:, :, 0].astype(bool)


# ------------------------------------------------------------------------------- objects
def _shape_polygon(rng: np.random.Generator, cls: int, cx: float, cy: float, radius: float) -> np.ndarray:
    """(N, 2) outline of a circle (48-gon), triangle or square of circumradius `radius`."""
    if cls == 0:
        angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    elif cls == 1:
        angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2, 4]) * np.pi / 3 + rng.uniform(-0.25, 0.25, 3)
    else:
        angles = rng.uniform(0, np.pi / 2) + np.arange(4) * np.pi / 2
    return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)


def _object_color(rng: np.random.Generator, backdrop: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """A vivid random color, or (1 in 4) one close to the backdrop under the object."""
    if rng.random() < 0.25:
        cx, cy = np.clip(polygon.mean(axis=0).astype(int), 0, [backdrop.shape[1] - 1, backdrop.shape[0] - 1])
        return np.clip(backdrop[cy, cx] + rng.normal(0, 30, 3), 0, 255)
    return rng.uniform(0, 255, 3)


def _sample_shapes(rng: np.random.Generator, h: int, w: int, backdrop: np.ndarray, max_count: int = 8) -> List[dict]:
    """2..max_count random shapes, sizes log-uniform from small (5 px radius) to large."""
    objects = []
    for _ in range(int(rng.integers(2, max_count + 1))):
        cls = int(rng.integers(0, 3))
        radius = float(np.exp(rng.uniform(np.log(5.0), np.log(0.3 * min(h, w)))))
        cx, cy = rng.uniform(0.3 * radius, w - 0.3 * radius), rng.uniform(0.3 * radius, h - 0.3 * radius)
        polygon = _shape_polygon(rng, cls, cx, cy, radius)
        color = _object_color(rng, backdrop, polygon)
        objects.append({"category": cls, "polygon": polygon, "mask": _fill_polygon(h, w, polygon), "color": color})
    return objects


def _keep_visible(objects: List[dict], h: int, w: int, min_fraction: float = 0.35,
                  min_pixels: int = 20) -> Tuple[List[dict], np.ndarray]:
    """Drop the objects left mostly hidden by those drawn after them.

    Returns:
        the kept objects (each with its "visible" mask added) and the owner map (int16 h x w,
        index into the kept list of the object seen at each pixel, -1 for background).
    """
    while True:
        owner = np.full((h, w), -1, dtype=np.int16)
        for i, obj in enumerate(objects):
            owner[obj["mask"]] = i
        hidden = []
        for i, obj in enumerate(objects):
            obj["visible"] = owner == i
            visible = int(obj["visible"].sum())
            if visible < max(min_pixels, min_fraction * int(obj["mask"].sum())) or not _mask_polygons(obj["visible"]):
                hidden.append(i)
        if not hidden:
            return objects, owner
        objects = [obj for i, obj in enumerate(objects) if i not in hidden]


def _paint(image: np.ndarray, objects: List[dict]) -> None:
    """Draw the objects in order (each covering those before), with their details (the faces
    of the stick figures) right after each one, so that later objects cover those too."""
    import cv2

    for obj in objects:
        image[obj["mask"]] = obj["color"]
        for center, radius, color in obj.get("details", ()):
            cv2.circle(image, center, radius, color, -1, cv2.LINE_8, shift=4)


# ---------------------------------------------------------------------------- annotations
def _mask_polygons(mask: np.ndarray) -> List[List[float]]:
    """Outlines of the parts of `mask` (continuous coordinates), parts under 4 pixels dropped."""
    polygons = []
    for polygon in _mask_to_polygons(mask):
        xy = np.asarray(polygon).reshape(-1, 2)
        if polygon_area(xy[:, 0], xy[:, 1]) >= 4:
            polygons.append([round(v, 2) for v in polygon])
    return polygons


def _xywh(mask: np.ndarray) -> List[float]:
    """The pixel extent [x, y, w, h] of a non-empty mask."""
    import cv2

    return [float(v) for v in cv2.boundingRect(mask.astype(np.uint8))]


def _instance_annotation(obj: dict, h: int, w: int) -> Dict[str, Any]:
    """COCO annotation fields of the visible part of `obj`."""
    polygon = obj.get("polygon")
    whole = polygon is not None and bool((obj["visible"] == obj["mask"]).all())
    inside = polygon is not None and polygon.min() >= 0 and (polygon[:, 0] <= w).all() and (polygon[:, 1] <= h).all()
    if whole and inside:
        # Untouched and inside the image: the exact outline it was drawn from.
        segmentation = [[round(float(v), 2) for v in polygon.reshape(-1)]]
        x0, y0 = polygon.min(axis=0)
        x1, y1 = polygon.max(axis=0)
        bbox = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
    else:
        segmentation = _mask_polygons(obj["visible"])
        bbox = _xywh(obj["visible"])
    return {"segmentation": segmentation, "bbox": [round(v, 2) for v in bbox], "area": int(obj["visible"].sum()),
            "iscrowd": 0}


# ---------------------------------------------------------------------------- stick figures
# Figure-local joint positions (units of figure height, x to the image right, y down): the
# figure faces the camera, so its left side is on the image's right.
_HEAD = (0.0, -0.42)
_HEAD_RADIUS = 0.07


def _figure_keypoints(rng: np.random.Generator) -> np.ndarray:
    """(17, 2) joints in COCO keypoint order, figure-local."""
    points = {"nose": (0.0, -0.41), "left_eye": (0.028, -0.435), "right_eye": (-0.028, -0.435),
              "left_ear": (0.054, -0.42), "right_ear": (-0.054, -0.42)}
    for side, sign in (("left", 1.0), ("right", -1.0)):
        shoulder = np.array([sign * rng.uniform(0.09, 0.13), -0.3])
        hip = np.array([sign * rng.uniform(0.05, 0.08), 0.02])
        # Angles from straight down, positive = away from the body.
        upper, lower = rng.uniform(-0.3, 2.6), rng.uniform(-0.6, 1.2)
        elbow = shoulder + 0.15 * np.array([sign * np.sin(upper), np.cos(upper)])
        wrist = elbow + 0.14 * np.array([sign * np.sin(upper + lower), np.cos(upper + lower)])
        thigh, shin = rng.uniform(-0.2, 0.6), rng.uniform(-0.5, 0.5)
        knee = hip + 0.22 * np.array([sign * np.sin(thigh), np.cos(thigh)])
        ankle = knee + 0.22 * np.array([sign * np.sin(thigh + shin), np.cos(thigh + shin)])
        points.update({f"{side}_shoulder": shoulder, f"{side}_elbow": elbow, f"{side}_wrist": wrist,
                       f"{side}_hip": hip, f"{side}_knee": knee, f"{side}_ankle": ankle})
    return np.array([points[name] for name in COCO_PERSON_KEYPOINT_NAMES], dtype=np.float64)


def _figure(rng: np.random.Generator, h: int, w: int) -> dict:
    """A random stick figure: its joints (17, 2) in pixels, mask, color and face details."""
    import cv2

    height = float(rng.uniform(50, 0.9 * h))
    angle = rng.uniform(-0.25, 0.25)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    center = np.array([rng.uniform(0, w), rng.uniform(0.3 * height, h - 0.1 * height)])
    local = _figure_keypoints(rng)
    joints = (local @ rotation.T) * height + center
    head = (np.array(_HEAD) @ rotation.T) * height + center
    index = {name: i for i, name in enumerate(COCO_PERSON_KEYPOINT_NAMES)}

    def px(point):  # OpenCV fixed-point coordinates (4 fractional bits) of a continuous point
        return tuple(int(v) for v in np.round((np.asarray(point) - 0.5) * 16))

    canvas = np.zeros((h, w), dtype=np.uint8)
    thickness = max(2, int(round(0.045 * height)))
    torso = [joints[index[k]] for k in ("left_shoulder", "right_shoulder", "right_hip", "left_hip")]
    cv2.fillPoly(canvas, [np.array([px(p) for p in torso], dtype=np.int32)], 1, cv2.LINE_8, shift=4)
    for a, b, _ in KEYPOINT_CONNECTION_RULES[4:]:  # the limbs; the face is the head disc
        cv2.line(canvas, px(joints[index[a]]), px(joints[index[b]]), 1, thickness, cv2.LINE_8, shift=4)
    neck = (joints[index["left_shoulder"]] + joints[index["right_shoulder"]]) / 2
    cv2.line(canvas, px(neck), px(head), 1, thickness, cv2.LINE_8, shift=4)
    cv2.circle(canvas, px(head), int(round(_HEAD_RADIUS * height * 16)), 1, -1, cv2.LINE_8, shift=4)

    color = rng.uniform(0, 255, 3)
    # Dark eyes and ears (inside the head disc), so the face has an orientation to learn.
    dark = tuple(float(c) for c in color * 0.3)
    details = [(px(joints[index[name]]), int(round(max(1.0, 0.014 * height) * 16)), dark)
               for name in ("left_eye", "right_eye", "left_ear", "right_ear")]
    return {"category": 0, "joints": joints, "mask": canvas.astype(bool), "color": color, "details": details,
            "polygon": None}


def _keypoint_annotation(joints: np.ndarray, figure_index: int, owner: np.ndarray) -> Tuple[List[int], int]:
    """COCO keypoints [x, y, v] * 17 (integer pixel indices) and the number labelled.

    v = 2 where the figure itself is seen at the joint, 1 where something covers it, and
    (0, 0, 0) for joints outside the image.
    """
    h, w = owner.shape
    keypoints = []
    for x, y in joints:
        col, row = int(np.floor(x)), int(np.floor(y))
        if not (0 <= col < w and 0 <= row < h):
            keypoints += [0, 0, 0]
            continue
        seen = owner[row, col]
        keypoints += [col, row, 2 if seen in (figure_index, -1) else 1]
    return keypoints, sum(1 for v in keypoints[2::3] if v > 0)


# ------------------------------------------------------------------------- image makers
def _image_size(rng: np.random.Generator, image_size: Tuple[int, int]) -> Tuple[int, int]:
    low, high = image_size
    return int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1))


def _make_instances_image(rng: np.random.Generator, image_size: Tuple[int, int]) -> Tuple[np.ndarray, List[dict]]:
    h, w = _image_size(rng, image_size)
    backdrop = _plain_background(rng, h, w)
    _distractor_strokes(rng, backdrop)
    objects = []
    while not objects:
        objects, _ = _keep_visible(_sample_shapes(rng, h, w, backdrop), h, w)
    image = backdrop.copy()
    _paint(image, objects)
    annotations = [dict(_instance_annotation(obj, h, w), category_id=_THING_IDS[obj["category"]]) for obj in objects]
    return _finish(image, rng), annotations


def _make_keypoints_image(rng: np.random.Generator, image_size: Tuple[int, int]) -> Tuple[np.ndarray, List[dict]]:
    h, w = _image_size(rng, image_size)
    backdrop = _plain_background(rng, h, w)
    _distractor_strokes(rng, backdrop)
    while True:
        figures = [_figure(rng, h, w) for _ in range(int(rng.integers(1, 4)))]
        # A few unannotated shapes in front of / behind the figures occlude them.
        clutter = _sample_shapes(rng, h, w, backdrop, max_count=3)[: int(rng.integers(0, 3))]
        for obj in clutter:
            obj["clutter"] = True
        order = rng.permutation(len(figures) + len(clutter))
        objects, owner = _keep_visible([(figures + clutter)[i] for i in order], h, w, min_fraction=0.4)
        annotations = []
        for i, obj in enumerate(objects):
            if obj.get("clutter"):
                continue
            keypoints, num_keypoints = _keypoint_annotation(obj["joints"], i, owner)
            if num_keypoints >= 3:
                annotations.append(dict(_instance_annotation(obj, h, w), category_id=1, keypoints=keypoints,
                                        num_keypoints=num_keypoints))
        if annotations:
            break
    image = backdrop.copy()
    _paint(image, objects)
    return _finish(image, rng), annotations


def _make_panoptic_image(rng: np.random.Generator,
                         image_size: Tuple[int, int]) -> Tuple[np.ndarray, List[dict], np.ndarray]:
    """A stuff scene with shapes: image, thing objects (with "visible"), stuff map."""
    h, w = _image_size(rng, image_size)
    backdrop, stuff = _stuff_scene(rng, h, w)
    _distractor_strokes(rng, backdrop)
    objects = []
    while not objects:
        objects, _ = _keep_visible(_sample_shapes(rng, h, w, backdrop, max_count=6), h, w)
    image = backdrop.copy()
    _paint(image, objects)
    return _finish(image, rng), objects, stuff


# ---------------------------------------------------------------------------- file writing
def _write_jpeg(path: str, rgb: np.ndarray) -> None:
    import cv2

    if not cv2.imwrite(path, rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]):
        raise OSError(f"could not write {path}")


def _write_png(path: str, array: np.ndarray) -> None:
    import cv2

    if not cv2.imwrite(path, array[:, :, ::-1] if array.ndim == 3 else array):
        raise OSError(f"could not write {path}")


def _write_json(path: str, content: Any) -> None:
    with open(path, "w") as f:
        json.dump(content, f, separators=(",", ":"))


def _image_entry(index: int, image: np.ndarray) -> Dict[str, Any]:
    return {"id": index + 1, "file_name": f"{index + 1:06d}.jpg", "height": int(image.shape[0]),
            "width": int(image.shape[1])}


def _thing_categories() -> List[Dict[str, Any]]:
    return [{"id": i, "name": n, "supercategory": "shape"} for i, n in zip(_THING_IDS, SHAPES_THING_CLASSES)]


def _write_coco(folder: str, json_name: str, images: List[dict], annotations: List[dict],
                categories: List[dict]) -> None:
    for ann_id, annotation in enumerate(annotations, start=1):
        annotation["id"] = ann_id
    _write_json(os.path.join(folder, json_name), {
        "info": {"description": "detzoo synthetic shapes"},
        "images": images, "annotations": annotations, "categories": categories})


def _write_instances(folder: str, rngs: List[np.random.Generator], image_size: Tuple[int, int]) -> None:
    images, annotations = [], []
    for index, rng in enumerate(rngs):
        image, anns = _make_instances_image(rng, image_size)
        images.append(_image_entry(index, image))
        _write_jpeg(os.path.join(folder, "images", images[-1]["file_name"]), image)
        annotations += [dict(a, image_id=index + 1) for a in anns]
    _write_coco(folder, "instances.json", images, annotations, _thing_categories())


def _write_keypoints(folder: str, rngs: List[np.random.Generator], image_size: Tuple[int, int]) -> None:
    images, annotations = [], []
    for index, rng in enumerate(rngs):
        image, anns = _make_keypoints_image(rng, image_size)
        images.append(_image_entry(index, image))
        _write_jpeg(os.path.join(folder, "images", images[-1]["file_name"]), image)
        annotations += [dict(a, image_id=index + 1) for a in anns]
    index = {name: i + 1 for i, name in enumerate(COCO_PERSON_KEYPOINT_NAMES)}
    person = {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(COCO_PERSON_KEYPOINT_NAMES),
              "skeleton": [[index[a], index[b]] for a, b, _ in KEYPOINT_CONNECTION_RULES]}
    _write_coco(folder, "person_keypoints.json", images, annotations, [person])


def _panoptic_labels(objects: List[dict], stuff: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, List[dict]]:
    """Panoptic RGB PNG, stuff-only PNG (things = 0, stuff = 1..S), full semantic PNG (things
    0..T-1, stuff T..T+S-1) and the panoptic segments_info of one scene."""
    h, w = stuff.shape
    segment_ids = np.zeros((h, w), dtype=np.int64)
    semantic = (stuff + len(SHAPES_THING_CLASSES)).astype(np.uint8)
    stuff_only = (stuff + 1).astype(np.uint8)
    segments = []
    for cls, category_id in enumerate(_STUFF_IDS):
        region = (stuff == cls) & ~np.any([obj["visible"] for obj in objects], axis=0)
        if region.any():
            segments.append({"id": category_id * 1000, "category_id": category_id, "iscrowd": 0,
                             "bbox": _xywh(region), "area": int(region.sum())})
            segment_ids[region] = category_id * 1000
    for k, obj in enumerate(objects):
        category_id = _THING_IDS[obj["category"]]
        segment_id = category_id * 1000 + k + 1
        segments.append({"id": segment_id, "category_id": category_id, "iscrowd": 0,
                         "bbox": _xywh(obj["visible"]), "area": int(obj["visible"].sum())})
        segment_ids[obj["visible"]] = segment_id
        semantic[obj["visible"]] = obj["category"]
        stuff_only[obj["visible"]] = 0
    rgb = np.stack([segment_ids % 256, segment_ids // 256 % 256, segment_ids // 65536], axis=-1).astype(np.uint8)
    return rgb, stuff_only, semantic, segments


def _write_panoptic(folder: str, rngs: List[np.random.Generator], image_size: Tuple[int, int]) -> None:
    for sub in ("panoptic", "panoptic_stuff", "sem_seg"):
        os.makedirs(os.path.join(folder, sub))
    images, annotations, panoptic_annotations = [], [], []
    for index, rng in enumerate(rngs):
        image, objects, stuff = _make_panoptic_image(rng, image_size)
        entry = _image_entry(index, image)
        images.append(entry)
        png_name = entry["file_name"].replace(".jpg", ".png")
        _write_jpeg(os.path.join(folder, "images", entry["file_name"]), image)
        rgb, stuff_only, semantic, segments = _panoptic_labels(objects, stuff)
        _write_png(os.path.join(folder, "panoptic", png_name), rgb)
        _write_png(os.path.join(folder, "panoptic_stuff", png_name), stuff_only)
        _write_png(os.path.join(folder, "sem_seg", png_name), semantic)
        panoptic_annotations.append({"image_id": entry["id"], "file_name": png_name, "segments_info": segments})
        h, w = stuff.shape
        annotations += [dict(_instance_annotation(obj, h, w), category_id=_THING_IDS[obj["category"]],
                             image_id=entry["id"]) for obj in objects]
    _write_coco(folder, "instances.json", images, annotations, _thing_categories())
    categories = [dict(c, isthing=1, color=color) for c, color in zip(_thing_categories(), _THING_COLORS)]
    categories += [{"id": i, "name": n, "supercategory": "stuff", "isthing": 0, "color": color}
                   for i, n, color in zip(_STUFF_IDS, SHAPES_STUFF_CLASSES, _STUFF_COLORS)]
    _write_json(os.path.join(folder, "panoptic.json"), {
        "info": {"description": "detzoo synthetic shapes (panoptic)"},
        "images": images, "annotations": panoptic_annotations, "categories": categories})


_WRITERS: Dict[str, Callable[[str, List[np.random.Generator], Tuple[int, int]], None]] = {
    "instances": _write_instances, "keypoints": _write_keypoints, "panoptic": _write_panoptic}


# --------------------------------------------------------------------------- the cache folder
def generate_shapes(root: str, kind: str = "instances", split: str = "train", num_images: Optional[int] = None,
                    seed: Optional[int] = None, image_size: Tuple[int, int] = (256, 384)) -> str:
    """Make sure the synthetic dataset (kind, split) exists under `root`; return its folder.

    Args:
        root (str): the shapes folder, e.g. "$DETZOO_DATASETS/shapes".
        kind (str): "instances", "keypoints" or "panoptic" (the panoptic scenes also serve
            the semantic-segmentation datasets).
        split (str): "train" or "val" (different seeds; sizes in DEFAULT_NUM_IMAGES).
        num_images (int): number of images (default: by split).
        seed (int): base seed (default: by split). Image i is drawn from
            numpy.random.default_rng([seed, kind, i]) alone.
        image_size (low, high): each image's height and width are drawn from [low, high].

    The folder is reused when it was made with the same parameters, and (re)generated
    otherwise: under a lock, into a temporary folder renamed into place when complete.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown shapes dataset kind {kind!r}; expected one of {KINDS}")
    if split not in _DEFAULT_SEEDS and (num_images is None or seed is None):
        raise ValueError(f"shapes split {split!r} has no default size and seed; give num_images and seed")
    params = {"version": _GENERATOR_VERSION, "kind": kind, "split": split,
              "num_images": int(DEFAULT_NUM_IMAGES[kind][split] if num_images is None else num_images),
              "seed": int(_DEFAULT_SEEDS[split] if seed is None else seed), "image_size": list(image_size)}
    if params["num_images"] <= 0:
        raise ValueError(f"num_images must be positive, got {num_images}")
    if not 16 <= image_size[0] <= image_size[1]:
        raise ValueError(f"image_size must be (low, high) with 16 <= low <= high, got {image_size}")
    folder = os.path.join(root, f"{kind}_{split}")
    if _read_params(folder) == params:
        return folder
    os.makedirs(root, exist_ok=True)
    with file_lock(folder):
        if _read_params(folder) == params:  # made by another process while we waited
            return folder
        logger.info(f"Generating the synthetic shapes dataset {kind}/{split} ({params['num_images']} images) "
                    f"in {folder}")
        _generate_into(folder, root, params)
    return folder


def _read_params(folder: str) -> Optional[Dict[str, Any]]:
    try:
        with open(os.path.join(folder, "info.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _generate_into(folder: str, root: str, params: Dict[str, Any]) -> None:
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}-", dir=root)
    try:
        os.makedirs(os.path.join(tmp, "images"))
        kind_code = KINDS.index(params["kind"])
        rngs = [np.random.default_rng([params["seed"], kind_code, i]) for i in range(params["num_images"])]
        _WRITERS[params["kind"]](tmp, rngs, tuple(params["image_size"]))
        _write_json(os.path.join(tmp, "info.json"), params)  # last: marks the folder complete
        if os.path.exists(folder):
            shutil.rmtree(folder)  # made with other parameters
        os.rename(tmp, folder)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)


# ------------------------------------------------------------------------------- metadata
def _instances_metadata() -> Dict[str, Any]:
    return {"thing_classes": list(SHAPES_THING_CLASSES), "thing_colors": _THING_COLORS,
            "thing_dataset_id_to_contiguous_id": {cat_id: i for i, cat_id in enumerate(_THING_IDS)}}


def _keypoints_metadata() -> Dict[str, Any]:
    return {"thing_classes": ["person"], "thing_dataset_id_to_contiguous_id": {1: 0},
            "keypoint_names": COCO_PERSON_KEYPOINT_NAMES, "keypoint_flip_map": COCO_PERSON_KEYPOINT_FLIP_MAP,
            "keypoint_connection_rules": KEYPOINT_CONNECTION_RULES}


def _semantic_classes() -> Tuple[List[str], List[List[int]]]:
    """The classes of the full semantic labels: things first, then stuff."""
    return list(SHAPES_THING_CLASSES) + list(SHAPES_STUFF_CLASSES), _THING_COLORS + _STUFF_COLORS


def _panoptic_standard_metadata() -> Dict[str, Any]:
    names, colors = _semantic_classes()
    return {"thing_classes": names, "thing_colors": colors, "stuff_classes": list(names), "stuff_colors": list(colors),
            "thing_dataset_id_to_contiguous_id": {cat_id: i for i, cat_id in enumerate(_THING_IDS)},
            "stuff_dataset_id_to_contiguous_id": {cat_id: len(_THING_IDS) + i for i, cat_id in enumerate(_STUFF_IDS)}}


def _panoptic_separated_metadata() -> Dict[str, Any]:
    stuff_ids = {cat_id: i + 1 for i, cat_id in enumerate(_STUFF_IDS)}
    stuff_ids[0] = 0  # the stuff-only PNGs label every thing pixel 0
    return dict(_instances_metadata(), stuff_classes=["things"] + list(SHAPES_STUFF_CLASSES),
                stuff_colors=[_THINGS_COLOR] + _STUFF_COLORS, stuff_dataset_id_to_contiguous_id=stuff_ids)


# --------------------------------------------------------------------------- registration
def _generate_before_loading(name: str, generate: Callable[[], Any]) -> None:
    """Make the registered loader of `name` generate its files first."""
    load = DatasetCatalog[name]

    def generate_then_load():
        generate()
        return load()

    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, generate_then_load)


def register_all_shapes(root: str, splits: Sequence[str] = ("train", "val")) -> None:
    """Register the shapes datasets (see the module docstring) with their files under `root`.

    Nothing is generated now; each dataset's files are made on its first DatasetCatalog.get.
    """
    for split in splits:
        def make(kind, split=split):
            return lambda: generate_shapes(root, kind, split)

        folder = os.path.join(root, f"instances_{split}")
        name = f"shapes_{split}"
        register_coco_instances(name, _instances_metadata(), os.path.join(folder, "instances.json"),
                                os.path.join(folder, "images"))
        _generate_before_loading(name, make("instances"))

        folder = os.path.join(root, f"keypoints_{split}")
        name = f"shapes_keypoints_{split}"
        register_coco_instances(name, _keypoints_metadata(), os.path.join(folder, "person_keypoints.json"),
                                os.path.join(folder, "images"))
        _generate_before_loading(name, make("keypoints"))

        folder = os.path.join(root, f"panoptic_{split}")
        image_root = os.path.join(folder, "images")
        name = f"shapes_sem_seg_{split}"
        sem_seg_root = os.path.join(folder, "sem_seg")
        DatasetCatalog.register(name, lambda gt=sem_seg_root, images=image_root: load_sem_seg(gt, images))
        _generate_before_loading(name, make("panoptic"))
        classes, colors = _semantic_classes()
        MetadataCatalog.get(name).set(stuff_classes=classes, stuff_colors=colors, ignore_label=255,
                                      evaluator_type="sem_seg", sem_seg_root=sem_seg_root, image_root=image_root)

        prefix = f"shapes_panoptic_{split}"
        args = (image_root, os.path.join(folder, "panoptic"), os.path.join(folder, "panoptic.json"))
        register_coco_panoptic(prefix, _panoptic_standard_metadata(), *args, os.path.join(folder, "instances.json"))
        register_coco_panoptic_separated(prefix, _panoptic_separated_metadata(), *args,
                                         os.path.join(folder, "panoptic_stuff"), os.path.join(folder, "instances.json"))
        for name in (prefix, prefix + "_separated", prefix + "_stuffonly"):
            _generate_before_loading(name, make("panoptic"))
