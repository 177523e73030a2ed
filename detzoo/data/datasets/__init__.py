"""Dataset loaders (one module per dataset family) and the registration of the built-in
datasets, which happens when this package is imported."""
from .cityscapes import load_cityscapes_instances, load_cityscapes_semantic
from .coco import convert_to_coco_dict, convert_to_coco_json, load_coco_json, load_sem_seg, register_coco_instances
from .coco_panoptic import load_coco_panoptic_json, register_coco_panoptic, register_coco_panoptic_separated
from .lvis import get_lvis_instances_meta, load_lvis_json, register_lvis_instances
from .pascal_voc import load_voc_instances, register_pascal_voc
from .shapes import generate_shapes, register_all_shapes
from . import builtin as _builtin  # noqa: F401  (registers the built-in datasets)

__all__ = [k for k in globals() if not k.startswith("_")]
