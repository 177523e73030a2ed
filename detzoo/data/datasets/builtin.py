"""Registers Detectron2's built-in datasets, with their standard layouts, under the folder
$DETZOO_DATASETS (default: ./datasets), and detzoo's synthetic shapes datasets under
$DETZOO_DATASETS/shapes. Registering reads no file; a dataset's files are needed only when
it is loaded.

To add your own dataset, call DatasetCatalog.register / register_coco_instances in your code
rather than editing this file.
"""
import os

from ..catalog import DatasetCatalog, MetadataCatalog
from .builtin_meta import _get_builtin_metadata
from .cityscapes import load_cityscapes_instances, load_cityscapes_semantic
from .cityscapes_panoptic import register_all_cityscapes_panoptic
from .coco import register_coco_instances
from .coco_panoptic import register_coco_panoptic, register_coco_panoptic_separated
from .lvis import get_lvis_instances_meta, register_lvis_instances
from .pascal_voc import register_pascal_voc
from .shapes import register_all_shapes

# ---------------------------------------------------------------------------------- COCO
# name -> (image folder, annotation file), relative to the datasets root.
_PREDEFINED_SPLITS_COCO = {
    "coco": {
        "coco_2014_train": ("coco/train2014", "coco/annotations/instances_train2014.json"),
        "coco_2014_val": ("coco/val2014", "coco/annotations/instances_val2014.json"),
        "coco_2014_minival": ("coco/val2014", "coco/annotations/instances_minival2014.json"),
        "coco_2014_valminusminival": ("coco/val2014", "coco/annotations/instances_valminusminival2014.json"),
        "coco_2014_minival_100": ("coco/val2014", "coco/annotations/instances_minival2014_100.json"),
        "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
        "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
        "coco_2017_test": ("coco/test2017", "coco/annotations/image_info_test2017.json"),
        "coco_2017_test-dev": ("coco/test2017", "coco/annotations/image_info_test-dev2017.json"),
        "coco_2017_val_100": ("coco/val2017", "coco/annotations/instances_val2017_100.json"),
    },
    "coco_person": {
        "keypoints_coco_2014_train": ("coco/train2014", "coco/annotations/person_keypoints_train2014.json"),
        "keypoints_coco_2014_val": ("coco/val2014", "coco/annotations/person_keypoints_val2014.json"),
        "keypoints_coco_2014_minival": ("coco/val2014", "coco/annotations/person_keypoints_minival2014.json"),
        "keypoints_coco_2014_valminusminival": (
            "coco/val2014", "coco/annotations/person_keypoints_valminusminival2014.json"),
        "keypoints_coco_2014_minival_100": ("coco/val2014", "coco/annotations/person_keypoints_minival2014_100.json"),
        "keypoints_coco_2017_train": ("coco/train2017", "coco/annotations/person_keypoints_train2017.json"),
        "keypoints_coco_2017_val": ("coco/val2017", "coco/annotations/person_keypoints_val2017.json"),
        "keypoints_coco_2017_val_100": ("coco/val2017", "coco/annotations/person_keypoints_val2017_100.json"),
    },
}

# panoptic name -> (panoptic PNG folder, panoptic JSON, stuff-only PNG folder). The stuff-only
# PNGs are made from the panoptic ones by Detectron2's datasets/prepare_panoptic_fpn.py.
_PREDEFINED_SPLITS_COCO_PANOPTIC = {
    "coco_2017_train_panoptic": ("coco/panoptic_train2017", "coco/annotations/panoptic_train2017.json",
                                 "coco/panoptic_stuff_train2017"),
    "coco_2017_val_panoptic": ("coco/panoptic_val2017", "coco/annotations/panoptic_val2017.json",
                               "coco/panoptic_stuff_val2017"),
    "coco_2017_val_100_panoptic": ("coco/panoptic_val2017_100", "coco/annotations/panoptic_val2017_100.json",
                                   "coco/panoptic_stuff_val2017_100"),
}


def _join(root: str, path: str) -> str:
    return path if "://" in path else os.path.join(root, path)


def register_all_coco(root: str) -> None:
    for family, splits in _PREDEFINED_SPLITS_COCO.items():
        for name, (image_root, json_file) in splits.items():
            register_coco_instances(name, _get_builtin_metadata(family), _join(root, json_file),
                                    os.path.join(root, image_root))

    instances = _PREDEFINED_SPLITS_COCO["coco"]
    for prefix, (panoptic_root, panoptic_json, semantic_root) in _PREDEFINED_SPLITS_COCO_PANOPTIC.items():
        image_root, instances_json = instances[prefix[: -len("_panoptic")]]
        image_root, instances_json = os.path.join(root, image_root), _join(root, instances_json)
        panoptic_root, panoptic_json = os.path.join(root, panoptic_root), os.path.join(root, panoptic_json)
        # Panoptic FPN's "separated" version: <prefix>_separated and <prefix>_stuffonly.
        register_coco_panoptic_separated(prefix, _get_builtin_metadata("coco_panoptic_separated"), image_root,
                                         panoptic_root, panoptic_json, os.path.join(root, semantic_root),
                                         instances_json)
        # The "standard" version (Panoptic-DeepLab): <prefix> itself.
        register_coco_panoptic(prefix, _get_builtin_metadata("coco_panoptic_standard"), image_root, panoptic_root,
                               panoptic_json, instances_json)


# ---------------------------------------------------------------------------------- LVIS
_PREDEFINED_SPLITS_LVIS = {
    "lvis_v1": {
        "lvis_v1_train": ("coco/", "lvis/lvis_v1_train.json"),
        "lvis_v1_val": ("coco/", "lvis/lvis_v1_val.json"),
        "lvis_v1_test_dev": ("coco/", "lvis/lvis_v1_image_info_test_dev.json"),
        "lvis_v1_test_challenge": ("coco/", "lvis/lvis_v1_image_info_test_challenge.json"),
    },
    "lvis_v0.5": {
        "lvis_v0.5_train": ("coco/", "lvis/lvis_v0.5_train.json"),
        "lvis_v0.5_val": ("coco/", "lvis/lvis_v0.5_val.json"),
        "lvis_v0.5_val_rand_100": ("coco/", "lvis/lvis_v0.5_val_rand_100.json"),
        "lvis_v0.5_test": ("coco/", "lvis/lvis_v0.5_image_info_test.json"),
    },
    "lvis_v0.5_cocofied": {
        "lvis_v0.5_train_cocofied": ("coco/", "lvis/lvis_v0.5_train_cocofied.json"),
        "lvis_v0.5_val_cocofied": ("coco/", "lvis/lvis_v0.5_val_cocofied.json"),
    },
}


def register_all_lvis(root: str) -> None:
    for family, splits in _PREDEFINED_SPLITS_LVIS.items():
        # v0.5 / v1 class names come from each split's own file, lazily (see lvis.py).
        metadata = get_lvis_instances_meta(family) if "cocofied" in family else {}
        for name, (image_root, json_file) in splits.items():
            register_lvis_instances(name, metadata, _join(root, json_file), os.path.join(root, image_root))


# ---------------------------------------------------------------------------- Cityscapes
_RAW_CITYSCAPES_SPLITS = {
    "cityscapes_fine_{task}_train": ("cityscapes/leftImg8bit/train", "cityscapes/gtFine/train"),
    "cityscapes_fine_{task}_val": ("cityscapes/leftImg8bit/val", "cityscapes/gtFine/val"),
    "cityscapes_fine_{task}_test": ("cityscapes/leftImg8bit/test", "cityscapes/gtFine/test"),
}


def register_all_cityscapes(root: str) -> None:
    for key, (image_dir, gt_dir) in _RAW_CITYSCAPES_SPLITS.items():
        meta = _get_builtin_metadata("cityscapes")
        image_dir, gt_dir = os.path.join(root, image_dir), os.path.join(root, gt_dir)

        name = key.format(task="instance_seg")
        DatasetCatalog.register(name, lambda x=image_dir, y=gt_dir: load_cityscapes_instances(
            x, y, from_json=True, to_polygons=True))
        MetadataCatalog.get(name).set(image_dir=image_dir, gt_dir=gt_dir, evaluator_type="cityscapes_instance", **meta)

        name = key.format(task="sem_seg")
        DatasetCatalog.register(name, lambda x=image_dir, y=gt_dir: load_cityscapes_semantic(x, y))
        MetadataCatalog.get(name).set(image_dir=image_dir, gt_dir=gt_dir, evaluator_type="cityscapes_sem_seg",
                                      ignore_label=255, **meta)


# ---------------------------------------------------------------------------- PASCAL VOC
_PASCAL_VOC_SPLITS = [
    ("voc_2007_trainval", "VOC2007", "trainval"),
    ("voc_2007_train", "VOC2007", "train"),
    ("voc_2007_val", "VOC2007", "val"),
    ("voc_2007_test", "VOC2007", "test"),
    ("voc_2012_trainval", "VOC2012", "trainval"),
    ("voc_2012_train", "VOC2012", "train"),
    ("voc_2012_val", "VOC2012", "val"),
]


def register_all_pascal_voc(root: str) -> None:
    for name, dirname, split in _PASCAL_VOC_SPLITS:
        year = 2007 if "2007" in name else 2012
        register_pascal_voc(name, os.path.join(root, dirname), split, year)
        MetadataCatalog.get(name).evaluator_type = "pascal_voc"


def get_datasets_root() -> str:
    """The folder the built-in datasets are registered under: $DETZOO_DATASETS or ./datasets."""
    return os.environ.get("DETZOO_DATASETS", "datasets")


_root = get_datasets_root()
register_all_coco(_root)
register_all_lvis(_root)
register_all_cityscapes(_root)
register_all_cityscapes_panoptic(_root)
register_all_pascal_voc(_root)
register_all_shapes(os.path.join(_root, "shapes"))
