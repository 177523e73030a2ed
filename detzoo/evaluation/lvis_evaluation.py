"""LVIS evaluation: box and mask AP with LVIS's federated rules, and AP by category frequency
(APr / APc / APf for rare, common, frequent categories).

The federated rules (https://www.lvisdataset.org/): an image is scored only on the categories
verified for it, those present (it has annotations of them) and those known absent
("neg_category_ids"); detections of other categories are not scored. An unmatched detection
of a category marked "not_exhaustive_category_ids" for its image is not a false positive. At
most 300 detections per image are kept (the best-scored), and AP is computed per category over
all images, as COCO does, without a per-category cap.

Two implementations give the same numbers: the `lvis` package's LVISEval (official, slow:
Python loops over every image and category), and detzoo's fast path, which runs COCOeval_opt's
C++ matching with the federated rules expressed as COCO data (see `_federated_coco`).
"""
import contextlib
import copy
import io
import itertools
import json
import logging
import os
from collections import OrderedDict, defaultdict

import numpy as np
import torch
from pycocotools.coco import COCO

from detzoo.config import CfgNode
from detzoo.data import MetadataCatalog
from detzoo.utils.file_io import PathManager
from detzoo.utils.logger import create_small_table

from .cityscapes_evaluation import _legacy_numpy
from .coco_evaluation import (
    _InstancesEvaluator,
    _box_proposal_metrics,
    _drop_invalid_results,
    _load_results,
    _require_fast_extension,
    _save_box_proposals,
)
from .fast_eval_api import COCOeval_opt

__all__ = ["LVISEvaluator"]

logger = logging.getLogger(__name__)

_TASKS = ("bbox", "segm")
_METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"]
# LVIS's official limit of detections per image.
_DEFAULT_MAX_DETS = 300
_FREQUENCIES = ("r", "c", "f")
# A crowd region this large contains any detection box (see _federated_coco).
_HUGE = 1e7


class LVISEvaluator(_InstancesEvaluator):
    """Box / mask AP (and proposal AR) on LVIS, with LVIS's metrics and federated rules."""

    def __init__(self, dataset_name, tasks=None, distributed=True, output_dir=None, *, max_dets_per_image=None,
                 use_fast_impl=True):
        """
        Args:
            dataset_name (str): a registered dataset with `json_file` metadata (LVIS format).
            tasks (tuple[str] or None): among "bbox", "segm"; None: what the predictions allow.
                A CfgNode is accepted (deprecated, as in Detectron2) and means None.
            distributed (bool): gather all processes' predictions and evaluate on the main one.
            output_dir (str or None): where "instances_predictions.pth" and
                "lvis_instances_results.json" are written.
            max_dets_per_image (int or None): detections kept per image (best scores first);
                None: LVIS's 300; a negative value: no limit.
            use_fast_impl (bool): detzoo's C++ evaluation (same numbers, much faster); False
                runs the `lvis` package's LVISEval.
        """
        if isinstance(tasks, CfgNode):
            logger.warning("LVISEvaluator(dataset_name, cfg) is deprecated: pass tasks explicitly")
            tasks = None
        if tasks is not None:
            tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
            unknown = [t for t in tasks if t not in _TASKS]
            if unknown:
                raise ValueError(f"LVISEvaluator: unknown tasks {unknown}; expected some of {list(_TASKS)}")
        self._tasks = tasks
        self._distributed = distributed
        self._output_dir = output_dir
        self._max_dets_per_image = _DEFAULT_MAX_DETS if max_dets_per_image is None else int(max_dets_per_image)
        self._use_fast_impl = use_fast_impl
        if use_fast_impl:
            _require_fast_extension()
        self._cpu_device = torch.device("cpu")
        self._dataset_name = dataset_name
        self._metadata = MetadataCatalog.get(dataset_name)
        if not hasattr(self._metadata, "json_file"):
            raise ValueError(f"LVISEvaluator: dataset {dataset_name!r} has no json_file metadata (the LVIS-format "
                             "annotation file)")
        self._json_file = self._metadata.json_file
        self._lvis_gt = _read_lvis_json(self._json_file)
        # Test-set files have no annotations: their results are for the evaluation server.
        self._do_evaluation = len(self._lvis_gt.get("annotations", [])) > 0

    def evaluate(self):
        """
        Returns:
            OrderedDict: task -> {"AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc",
            "APf"} on a 0-100 scale (NaN: cannot be computed, e.g. APr without rare
            categories); {} on processes other than the main one.
        """
        predictions = self._gathered_predictions()
        if predictions is None:
            return {}
        self._results = OrderedDict()
        if predictions and "proposals" in predictions[0]:
            self._eval_box_proposals(predictions)
        if not predictions or "instances" in predictions[0]:
            self._eval_predictions(predictions)
        return copy.deepcopy(self._results)

    def _eval_predictions(self, predictions):
        logger.info("Preparing results in the LVIS format ...")
        lvis_results = list(itertools.chain(*[p.get("instances", []) for p in predictions]))
        tasks = self._tasks or (("bbox", "segm") if any("segmentation" in r for r in lvis_results) else ("bbox",))
        self._map_category_ids(lvis_results)
        known_images = [img["id"] for img in self._lvis_gt["images"]]
        lvis_results = _drop_invalid_results(lvis_results, known_images, self._dataset_name)
        self._save_results(lvis_results, "lvis_instances_results.json")
        if not self._do_evaluation:
            logger.info("Annotations are not available for evaluation.")
            return
        logger.info("Evaluating predictions ...")
        for task in sorted(tasks):
            self._results[task] = _evaluate_predictions_on_lvis(
                self._lvis_gt if self._use_fast_impl else self._json_file,
                lvis_results,
                task,
                max_dets_per_image=self._max_dets_per_image,
                use_fast_impl=self._use_fast_impl,
            )

    def _map_category_ids(self, lvis_results):
        """Contiguous class ids -> LVIS category ids, in place (through the metadata's
        thing_dataset_id_to_contiguous_id, else LVIS's id = class + 1)."""
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id")
        num_classes = len(id_map) if id_map is not None else len(self._lvis_gt["categories"])
        reverse = {v: k for k, v in id_map.items()} if id_map is not None else {i: i + 1 for i in range(num_classes)}
        for result in lvis_results:
            category = result["category_id"]
            if category not in reverse:
                raise ValueError(f"a prediction for image {result['image_id']!r} has class {category}, but dataset "
                                 f"{self._dataset_name!r} has {num_classes} classes: predicted classes must be in "
                                 f"[0, {num_classes - 1}]")
            result["category_id"] = reverse[category]

    def _eval_box_proposals(self, predictions):
        if self._output_dir:
            _save_box_proposals(predictions, self._output_dir)
        if not self._do_evaluation:
            logger.info("Annotations are not available for evaluation.")
            return
        logger.info("Evaluating bbox proposals ...")
        self._results["box_proposals"] = _box_proposal_metrics(predictions, _lvis_gt_boxes_getter(self._lvis_gt))


def _read_lvis_json(json_file):
    local = PathManager.get_local_path(json_file)
    if not os.path.isfile(local):
        raise FileNotFoundError(f"LVIS annotation file {json_file} does not exist")
    try:
        with open(local) as f:
            dataset = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{json_file} is not valid JSON ({e})") from e
    if not isinstance(dataset, dict) or not all(isinstance(dataset.get(k), list) for k in ("images", "categories")):
        raise ValueError(f"{json_file} is not an LVIS annotation file: expected a JSON object with 'images' and "
                         "'categories' lists")
    return dataset


def _lvis_gt_boxes_getter(lvis_gt):
    """image_id -> (Tensor[G, 4] XYWH_ABS, Tensor[G] areas); LVIS has no crowd annotations."""
    by_image = defaultdict(list)
    for ann in lvis_gt.get("annotations", []):
        by_image[ann["image_id"]].append(ann)

    def get(image_id):
        anns = by_image.get(image_id, [])
        boxes = torch.as_tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        return boxes, torch.as_tensor([a["area"] for a in anns], dtype=torch.float32)
    return get


def _evaluate_predictions_on_lvis(lvis_gt, lvis_results, iou_type, max_dets_per_image=None, class_names=None,
                                  use_fast_impl=True):
    """LVIS metrics of `lvis_results` (x100; NaN where LVIS gives -1).

    Args:
        lvis_gt: the ground truth: an LVIS-format dict, a json path, or an `lvis.LVIS`.
        lvis_results (list[dict]): LVIS result dicts (LVIS category ids); may be empty.
        iou_type (str): "bbox" or "segm".
        max_dets_per_image (int or None): None: 300; negative: no limit.
        class_names: unused (kept for Detectron2's signature).
        use_fast_impl (bool): detzoo's C++ path, or the `lvis` package's LVISEval.
    """
    if iou_type not in _TASKS:
        raise ValueError(f"iou_type must be one of {list(_TASKS)}, got {iou_type!r}")
    max_dets = _DEFAULT_MAX_DETS if max_dets_per_image is None else int(max_dets_per_image)
    drop = ("bbox",) if iou_type == "segm" else ()
    # As for COCO: with a "bbox", LVIS would take the box area as the mask's area.
    lvis_results = [{k: v for k, v in r.items() if k not in drop} for r in lvis_results]
    if not lvis_results:
        logger.warning(f"No predictions to evaluate for {iou_type}; every AP is 0 (NaN where there is no ground "
                       "truth)")
        if not use_fast_impl:
            logger.info("The lvis package cannot take empty results; scoring them with detzoo's implementation")
            use_fast_impl = True
    if use_fast_impl:
        summary = _evaluate_fast(_as_lvis_dict(lvis_gt), lvis_results, iou_type, max_dets)
    else:
        summary = _evaluate_official(lvis_gt, lvis_results, iou_type, max_dets)
    results = {m: float(summary[m] * 100) if summary[m] >= 0 else float("nan") for m in _METRICS}
    logger.info(f"Evaluation results for {iou_type}: \n" + create_small_table(results))
    return results


def _as_lvis_dict(lvis_gt):
    if isinstance(lvis_gt, dict):
        return lvis_gt
    if isinstance(lvis_gt, (str, os.PathLike)):
        return _read_lvis_json(os.fspath(lvis_gt))
    if hasattr(lvis_gt, "dataset"):
        return lvis_gt.dataset
    raise TypeError(f"lvis_gt must be an LVIS-format dict, a json path or an lvis.LVIS, got {type(lvis_gt).__name__}")


# ---------------------------------------------------------------------------- official
def _evaluate_official(lvis_gt, lvis_results, iou_type, max_dets):
    try:
        from lvis import LVIS, LVISEval, LVISResults
    except ImportError as e:
        raise RuntimeError("use_fast_impl=False needs the `lvis` package (pip install lvis)") from e
    if isinstance(lvis_gt, dict):
        api = LVIS.__new__(LVIS)
        api.logger = logging.getLogger("lvis")
        api.dataset = lvis_gt
        api._create_index()
        lvis_gt = api
    elif isinstance(lvis_gt, (str, os.PathLike)):
        lvis_gt = LVIS(PathManager.get_local_path(os.fspath(lvis_gt)))
    logger.info(f"Evaluating with the lvis package, max detections per image = {max_dets}")
    # lvis 0.5.3 (its latest release) calls np.float, which numpy removed in 1.24.
    with _legacy_numpy(float=float), contextlib.redirect_stdout(io.StringIO()):
        dt = LVISResults(lvis_gt, lvis_results, max_dets=max_dets)
        lvis_eval = LVISEval(lvis_gt, dt, iou_type)
        lvis_eval.params.max_dets = max_dets
        lvis_eval.run()
    return lvis_eval.get_results()


# ---------------------------------------------------------------------------- fast
def _limit_dets_per_image(results, max_dets):
    """The best `max_dets` results of each image, in the order LVISResults leaves them
    (grouped by image in order of first appearance; score-sorted where cut)."""
    by_image = defaultdict(list)
    for r in results:
        by_image[r["image_id"]].append(r)
    if max_dets < 0:
        return [r for rs in by_image.values() for r in rs]
    kept = []
    for rs in by_image.values():
        kept.extend(rs if len(rs) <= max_dets else sorted(rs, key=lambda r: r["score"], reverse=True)[:max_dets])
    return kept


def _federated_coco(lvis_gt, iou_type):
    """A pycocotools COCO of the ground truth in which COCO's rules reproduce LVIS's.

    LVIS ignores an unmatched detection of a category not exhaustively annotated in its image.
    COCO ignores a detection matched to a crowd region, and tries crowd regions only after every
    regular ground truth. So each (image, not-exhaustive category) gets a crowd region covering
    any detection (IoU against a crowd is intersection / detection area = 1): a detection that
    matches no regular ground truth matches it and is ignored, and the regular matching is
    unchanged (a detection of zero area matches nothing, but LVIS does not score those at all).
    LVIS annotations are never crowds themselves.
    """
    annotations = [dict(ann, iscrowd=0) for ann in _scored_annotations(lvis_gt.get("annotations", []))]
    if any(ann.get("ignore") for ann in annotations):
        logger.warning("Some LVIS annotations have 'ignore' set, which detzoo's fast LVIS evaluation does not read; "
                       "use use_fast_impl=False to honour it")
    next_id = max((ann["id"] for ann in annotations), default=0) + 1
    for image in lvis_gt["images"]:
        height, width = image["height"], image["width"]
        for category in image.get("not_exhaustive_category_ids", []):
            crowd = {"id": next_id, "image_id": image["id"], "category_id": category, "iscrowd": 1,
                     "area": float(height * width), "bbox": [-_HUGE, -_HUGE, 2 * _HUGE + width, 2 * _HUGE + height]}
            if iou_type == "segm":
                crowd["segmentation"] = {"size": [height, width], "counts": [0, height * width]}
            annotations.append(crowd)
            next_id += 1
    coco = COCO()
    coco.dataset = {"images": lvis_gt["images"], "categories": lvis_gt["categories"], "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _federated_results(lvis_gt, results):
    """The results LVIS scores: those of categories verified for their image (present or in
    neg_category_ids)."""
    verified = {img["id"]: set(img.get("neg_category_ids", [])) for img in lvis_gt["images"]}
    for ann in _scored_annotations(lvis_gt.get("annotations", [])):
        verified[ann["image_id"]].add(ann["category_id"])
    return [r for r in results if r["category_id"] in verified.get(r["image_id"], ())]


def _scored_annotations(annotations):
    # LVISEval selects annotations and detections with area strictly inside (0, inf): those of
    # zero area take no part at all (not even as false positives).
    return [a for a in annotations if 0 < a["area"] < float("inf")]


def _drop_zero_area(coco_dt):
    annotations = coco_dt.dataset["annotations"]
    keep = _scored_annotations(annotations)
    if len(keep) != len(annotations):
        coco_dt.dataset["annotations"] = keep
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt.createIndex()


def _evaluate_fast(lvis_gt, lvis_results, iou_type, max_dets):
    """LVISEval's summary dict (AP, AP50, ..., APr, APc, APf, AR@N, ...; -1 where undefined),
    computed with COCOeval_opt."""
    results = _federated_results(lvis_gt, _limit_dets_per_image(lvis_results, max_dets))
    coco_gt = _federated_coco(lvis_gt, iou_type)
    coco_dt = _load_results(coco_gt, results)
    _drop_zero_area(coco_dt)
    coco_eval = COCOeval_opt(coco_gt, coco_dt, iou_type)
    # Every result left is scored (the per-image cut is done): no per-category cap.
    coco_eval.params.maxDets = [max(len(results), 1)]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.evaluate()
        coco_eval.accumulate()
    precision = coco_eval.eval["precision"][..., 0]  # [T, R, K, A]
    recall = coco_eval.eval["recall"][..., 0]  # [T, K, A]
    return _lvis_summary(precision, recall, coco_eval.params, _frequency_groups(lvis_gt, coco_eval.params.catIds),
                         max_dets)


def _frequency_groups(lvis_gt, category_ids):
    """Positions in `category_ids` of the rare, common and frequent categories."""
    frequency = {c["id"]: c.get("frequency") for c in lvis_gt["categories"]}
    return [[k for k, c in enumerate(category_ids) if frequency.get(c) == f] for f in _FREQUENCIES]


def _mean_defined(values):
    values = values[values > -1]
    return float(np.mean(values)) if values.size else -1.0


def _lvis_summary(precision, recall, params, freq_groups, max_dets):
    area = {label: i for i, label in enumerate(params.areaRngLbl)}
    iou = {t: int(np.argmin(np.abs(params.iouThrs - t))) for t in (0.5, 0.75)}
    summary = OrderedDict()
    summary["AP"] = _mean_defined(precision[..., area["all"]])
    summary["AP50"] = _mean_defined(precision[iou[0.5], ..., area["all"]])
    summary["AP75"] = _mean_defined(precision[iou[0.75], ..., area["all"]])
    for label, key in (("small", "APs"), ("medium", "APm"), ("large", "APl")):
        summary[key] = _mean_defined(precision[..., area[label]])
    for group, key in zip(freq_groups, ("APr", "APc", "APf")):
        summary[key] = _mean_defined(precision[:, :, group, area["all"]])
    summary[f"AR@{max_dets}"] = _mean_defined(recall[..., area["all"]])
    for label in ("small", "medium", "large"):
        summary[f"AR{label[0]}@{max_dets}"] = _mean_defined(recall[..., area[label]])
    return summary
