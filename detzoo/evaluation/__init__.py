"""Evaluators of detection results (COCO, LVIS, ...) and the loop that runs a model over a
dataset for them."""
from .fast_eval_api import COCOeval_opt

__all__ = ["COCOeval_opt"]
from .evaluator import DatasetEvaluator, DatasetEvaluators, inference_context, inference_on_dataset
from .cityscapes_evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator
from .coco_evaluation import COCOEvaluator
from .lvis_evaluation import LVISEvaluator
from .panoptic_evaluation import COCOPanopticEvaluator
from .pascal_voc_evaluation import PascalVOCDetectionEvaluator
from .rotated_coco_evaluation import RotatedCOCOEvaluator
from .sem_seg_evaluation import SemSegEvaluator
from .testing import print_csv_format, verify_results

__all__ += [
    "DatasetEvaluator",
    "DatasetEvaluators",
    "inference_context",
    "inference_on_dataset",
    "CityscapesInstanceEvaluator",
    "CityscapesSemSegEvaluator",
    "COCOEvaluator",
    "LVISEvaluator",
    "COCOPanopticEvaluator",
    "PascalVOCDetectionEvaluator",
    "RotatedCOCOEvaluator",
    "SemSegEvaluator",
    "print_csv_format",
    "verify_results",
]
