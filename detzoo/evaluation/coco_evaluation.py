"""COCO-style evaluation: box AP, mask AP, keypoint AP and proposal recall, for COCO and for any
registered dataset (converted to COCO's JSON format on first use, then cached).

Metrics are those of pycocotools' `COCOeval` (see http://cocodataset.org/#detection-eval), on a
0-100 scale; NaN marks a metric that cannot be computed (e.g. APs on a set without small objects).
"""
import contextlib
import copy
import io
import itertools
import json
import logging
import os
import pickle
from collections import OrderedDict
from typing import Dict

import numpy as np
import pycocotools.mask as mask_util
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tabulate import tabulate

from detzoo.config import CfgNode
from detzoo.data import MetadataCatalog
from detzoo.data.datasets.coco import convert_to_coco_json
from detzoo.structures import Boxes, BoxMode, pairwise_iou
from detzoo.utils import comm
from detzoo.utils.file_io import PathManager
from detzoo.utils.logger import create_small_table

from .evaluator import DatasetEvaluator
from .fast_eval_api import COCOeval_opt

__all__ = ["COCOEvaluator", "instances_to_coco_json", "COCOevalMaxDets"]

logger = logging.getLogger(__name__)

_TASKS = ("bbox", "segm", "keypoints")
# pycocotools' maxDets for box and mask AP; the last entry is the per-image limit of AP.
_DEFAULT_MAX_DETS = [1, 10, 100]
# Names of COCOeval.stats entries, per task (keypoint stats have no "small" range).
_METRIC_NAMES = {
    "bbox": ["AP", "AP50", "AP75", "APs", "APm", "APl"],
    "segm": ["AP", "AP50", "AP75", "APs", "APm", "APl"],
    "keypoints": ["AP", "AP50", "AP75", "APm", "APl"],
}


class _InstancesEvaluator(DatasetEvaluator):
    """What the COCO and LVIS evaluators share: per image, the predicted instances in COCO's
    results format and/or the proposals, gathered onto the main process and saved.

    Subclasses set `_dataset_name`, `_distributed`, `_output_dir` and `_cpu_device`.
    """

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        """
        Args:
            inputs (list[dict]): one dict per image with at least "image_id".
            outputs (list[dict]): the model's outputs, with "instances" (pred_boxes XYXY_ABS,
                scores, pred_classes, optionally pred_masks Tensor[N, H, W] and pred_keypoints
                Tensor[N, K, 3]) and/or "proposals" (proposal_boxes, objectness_logits).
        """
        for input, output in zip(inputs, outputs):
            prediction = {"image_id": input["image_id"]}
            if "instances" in output:
                instances = output["instances"].to(self._cpu_device)
                prediction["instances"] = instances_to_coco_json(instances, input["image_id"])
            if "proposals" in output:
                prediction["proposals"] = output["proposals"].to(self._cpu_device)
            if len(prediction) > 1:
                self._predictions.append(prediction)

    def _save_results(self, results, file_name):
        """Write `results` (a list of dicts in the results format) as JSON to output_dir/file_name."""
        if self._output_dir:
            file_path = os.path.join(self._output_dir, file_name)
            logger.info(f"Saving results to {file_path}")
            with PathManager.open(file_path, "w") as f:
                f.write(json.dumps(results))

    def _gathered_predictions(self):
        """All processes' predictions on the main process, also saved as
        `output_dir/instances_predictions.pth`; None on the other processes."""
        predictions = self._predictions
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            if not comm.is_main_process():
                return None
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            with PathManager.open(os.path.join(self._output_dir, "instances_predictions.pth"), "wb") as f:
                torch.save(predictions, f)
        if not predictions:
            logger.warning(f"{type(self).__name__}: received no predictions for {self._dataset_name!r}; "
                           "every AP is 0")
        return predictions


class COCOEvaluator(_InstancesEvaluator):
    """AP of boxes, masks and keypoints, and AR of proposals, with COCO's metrics.

    Works for COCO and for any registered dataset in Detectron2's format: a dataset without
    `json_file` metadata is converted to COCO's JSON once, into
    `output_dir/<dataset_name>_coco_format.json`, and reused from there.

    Outputs written to `output_dir` (when given): "instances_predictions.pth" (the raw
    predictions, `torch.load`-able), "coco_instances_results.json" (COCO's result format, the
    file the COCO server takes) and, for proposals, "box_proposals.pkl".
    """

    def __init__(
        self,
        dataset_name,
        tasks=None,
        distributed=True,
        output_dir=None,
        *,
        max_dets_per_image=None,
        use_fast_impl=True,
        kpt_oks_sigmas=(),
        allow_cached_coco=True,
    ):
        """
        Args:
            dataset_name (str): a registered dataset, with `json_file` metadata (COCO-format
                annotations) or in Detectron2's format.
            tasks (tuple[str] or None): among "bbox", "segm", "keypoints"; None: the tasks the
                predictions allow. A CfgNode is accepted too (deprecated, as in Detectron2): the
                tasks are then inferred and cfg.TEST.KEYPOINT_OKS_SIGMAS is read from it.
            distributed (bool): gather the predictions of all processes and evaluate on the main
                one; otherwise evaluate what this process saw.
            output_dir (str or None): where to write the predictions and the converted dataset.
            max_dets_per_image (int or None): detections per image counted by AP (COCO: 100).
                Does not apply to keypoints (COCO counts 20).
            use_fast_impl (bool): run COCOeval's evaluate/accumulate in detzoo's C++
                (`COCOeval_opt`, same numbers as pycocotools); False runs pycocotools itself.
            kpt_oks_sigmas (sequence[float]): one OKS sigma per keypoint. Empty: the
                dataset's `keypoint_oks_sigmas` metadata if it has one, else COCO's 17 sigmas.
            allow_cached_coco (bool): reuse a previously converted COCO JSON of the dataset.
        """
        self._distributed = distributed
        self._output_dir = output_dir
        self._use_fast_impl = use_fast_impl
        if use_fast_impl:
            _require_fast_extension()
        self._max_dets_per_image = _max_dets_list(max_dets_per_image)
        if isinstance(tasks, CfgNode):
            logger.warning("COCOEvaluator(dataset_name, cfg) is deprecated: pass tasks and kpt_oks_sigmas explicitly")
            kpt_oks_sigmas = kpt_oks_sigmas or tasks.TEST.KEYPOINT_OKS_SIGMAS
            tasks = None
        self._tasks = _check_tasks(tasks)
        self._cpu_device = torch.device("cpu")
        self._dataset_name = dataset_name
        self._metadata = MetadataCatalog.get(dataset_name)
        if not hasattr(self._metadata, "json_file"):
            self._convert_to_coco(dataset_name, output_dir, allow_cached_coco)
        self._coco_api = _load_coco_api(self._metadata.json_file)
        self._kpt_oks_sigmas = list(kpt_oks_sigmas or self._metadata.get("keypoint_oks_sigmas", ()))
        # Test-set files have no annotations: their results are for the evaluation server.
        self._do_evaluation = "annotations" in self._coco_api.dataset

    def _convert_to_coco(self, dataset_name, output_dir, allow_cached):
        if output_dir is None:
            raise ValueError(f"COCOEvaluator: dataset {dataset_name!r} has no json_file metadata, so it must be "
                             "converted to COCO format, which needs an output_dir to write the file to")
        logger.info(f"Converting dataset {dataset_name!r} to COCO format ...")
        cache_path = os.path.join(output_dir, f"{dataset_name}_coco_format.json")
        self._metadata.json_file = cache_path
        convert_to_coco_json(dataset_name, cache_path, allow_cached=allow_cached)

    def evaluate(self, img_ids=None):
        """
        Args:
            img_ids (list or None): evaluate only these images (default: all of the dataset).

        Returns:
            OrderedDict: task -> {metric: value}; {} on processes other than the main one.
        """
        predictions = self._gathered_predictions()
        if predictions is None:
            return {}
        self._results = OrderedDict()
        if predictions and "proposals" in predictions[0]:
            self._eval_box_proposals(predictions)
        if not predictions or "instances" in predictions[0]:
            self._eval_predictions(predictions, img_ids=img_ids)
        return copy.deepcopy(self._results)

    def _tasks_from_predictions(self, coco_results):
        tasks = {"bbox"}
        for result in coco_results:
            if "segmentation" in result:
                tasks.add("segm")
            if "keypoints" in result:
                tasks.add("keypoints")
        return sorted(tasks)

    def _eval_predictions(self, predictions, img_ids=None):
        """Fill self._results with the AP metrics of each task."""
        logger.info("Preparing results for COCO format ...")
        coco_results = list(itertools.chain(*[p.get("instances", []) for p in predictions]))
        tasks = self._tasks or self._tasks_from_predictions(coco_results)
        _map_to_dataset_category_ids(coco_results, self._metadata, self._coco_api)
        coco_results = _drop_invalid_results(coco_results, self._coco_api.getImgIds(), self._dataset_name)

        self._save_results(coco_results, "coco_instances_results.json")
        if not self._do_evaluation:
            logger.info("Annotations are not available for evaluation.")
            return

        logger.info(f"Evaluating predictions with {'unofficial' if self._use_fast_impl else 'official'} COCO API...")
        for task in sorted(tasks):
            coco_eval = _evaluate_predictions_on_coco(
                self._coco_api,
                coco_results,
                task,
                kpt_oks_sigmas=self._kpt_oks_sigmas,
                cocoeval_fn=COCOeval_opt if self._use_fast_impl else COCOeval,
                img_ids=img_ids,
                max_dets_per_image=self._max_dets_per_image,
            )
            self._results[task] = self._derive_coco_results(coco_eval, task,
                                                            class_names=self._metadata.get("thing_classes"))

    def _eval_box_proposals(self, predictions):
        """Fill self._results["box_proposals"] with AR@100 / AR@1000 over all, small, medium and
        large objects."""
        if self._output_dir:
            _save_box_proposals(predictions, self._output_dir)
        if not self._do_evaluation:
            logger.info("Annotations are not available for evaluation.")
            return
        logger.info("Evaluating bbox proposals ...")
        self._results["box_proposals"] = _box_proposal_metrics(predictions, _coco_gt_boxes_getter(self._coco_api))

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        """{metric: value} from a summarized COCOeval: the standard metrics (x100, NaN where
        COCOeval gives -1) and, with `class_names`, "AP-<class>" for each category."""
        metrics = _METRIC_NAMES[iou_type]
        results = {name: float(coco_eval.stats[i] * 100) if coco_eval.stats[i] >= 0 else float("nan")
                   for i, name in enumerate(metrics)}
        logger.info(f"Evaluation results for {iou_type}: \n" + create_small_table(results))
        if not np.isfinite(sum(results.values())):
            logger.info("Some metrics cannot be computed and are shown as NaN.")
        if class_names is None or len(class_names) <= 1:
            return results

        precisions = coco_eval.eval["precision"]  # [IoU, recall, category, area range, max dets]
        if len(class_names) != precisions.shape[2]:
            logger.warning(f"{len(class_names)} thing_classes but {precisions.shape[2]} categories in the COCO "
                           "annotations; the per-category AP table is left out")
            return results
        per_category = _per_category_ap(precisions, class_names)
        logger.info(f"Per-category {iou_type} AP: \n" + _per_category_table(per_category, "AP"))
        results.update({"AP-" + name: ap for name, ap in per_category})
        return results


# ---------------------------------------------------------------------------- helpers
def _require_fast_extension():
    try:
        from detzoo import _cocoeval  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"use_fast_impl=True needs detzoo's C++ COCO evaluation (detzoo._cocoeval), which is not "
                           f"built ({e}). Build it with `make install`, or pass use_fast_impl=False to use "
                           "pycocotools' (slower) implementation.") from e


def _max_dets_list(max_dets_per_image):
    # COCOeval reads AP at maxDets[2]; [1, 10] keep the AR@1 / AR@10 figures.
    if max_dets_per_image is None:
        return list(_DEFAULT_MAX_DETS)
    if isinstance(max_dets_per_image, bool) or not isinstance(max_dets_per_image, (int, np.integer)) \
            or max_dets_per_image <= 0:
        raise ValueError(f"max_dets_per_image must be a positive int or None, got {max_dets_per_image!r}")
    return [1, 10, int(max_dets_per_image)]


def _check_tasks(tasks):
    if tasks is None:
        return None
    if isinstance(tasks, str):
        tasks = (tasks,)
    unknown = [t for t in tasks if t not in _TASKS]
    if unknown:
        raise ValueError(f"COCOEvaluator: unknown tasks {unknown}; expected some of {list(_TASKS)}")
    return tuple(tasks)


def _load_coco_api(json_file):
    """A pycocotools COCO object of `json_file` (any PathManager path), with errors that name
    the file when it is missing or not a COCO annotation file."""
    local = PathManager.get_local_path(json_file)
    if not os.path.isfile(local):
        raise FileNotFoundError(f"COCO annotation file {json_file} does not exist")
    try:
        with open(local) as f:
            dataset = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{json_file} is not valid JSON ({e}); if it is a cached conversion, delete it to "
                         "convert the dataset again") from e
    if not isinstance(dataset, dict) or not isinstance(dataset.get("images"), list):
        raise ValueError(f"{json_file} is not a COCO annotation file: expected a JSON object with an "
                         "'images' list")
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _map_to_dataset_category_ids(coco_results, metadata, coco_api):
    """Turn the contiguous class ids of the model (0..C-1) into the dataset's category ids, in
    place, raising ValueError on a class the dataset does not have."""
    if not coco_results:
        return
    classes = np.fromiter((r["category_id"] for r in coco_results), dtype=np.int64, count=len(coco_results))
    id_map = metadata.get("thing_dataset_id_to_contiguous_id")
    if id_map is None:
        known = np.array(sorted(coco_api.getCatIds()), dtype=np.int64)
        bad = ~np.isin(classes, known)
        if bad.any():
            raise ValueError(f"a prediction for image {coco_results[int(np.argmax(bad))]['image_id']!r} has "
                             f"category_id={classes[bad][0]}, which the ground truth of {metadata.name!r} does not "
                             f"have (its category ids: {known.tolist()[:20]}...)")
        return
    num_classes = len(id_map)
    contiguous = sorted(id_map.values())
    if contiguous != list(range(num_classes)):
        raise ValueError(f"thing_dataset_id_to_contiguous_id of {metadata.name!r} must map onto 0..{num_classes - 1}, "
                         f"got the values {contiguous[:20]}")
    bad = (classes < 0) | (classes >= num_classes)
    if bad.any():
        raise ValueError(f"a prediction for image {coco_results[int(np.argmax(bad))]['image_id']!r} has class "
                         f"{classes[bad][0]}, but dataset {metadata.name!r} has {num_classes} classes: predicted "
                         f"classes must be in [0, {num_classes - 1}]")
    reverse = np.zeros(num_classes, dtype=np.int64)
    for dataset_id, contiguous_id in id_map.items():
        reverse[contiguous_id] = dataset_id
    for result, dataset_id in zip(coco_results, reverse[classes].tolist()):
        result["category_id"] = dataset_id


def _drop_invalid_results(coco_results, known_image_ids, dataset_name=""):
    """`coco_results` without the entries COCO's evaluation cannot score, each kind dropped with
    a warning that says how many and gives an example: image ids that are not in the ground
    truth, boxes with NaN/inf coordinates or negative width/height, non-finite scores."""
    if not coco_results:
        return coco_results
    known_images = set(known_image_ids)
    image_ok = np.fromiter((r["image_id"] in known_images for r in coco_results), dtype=bool, count=len(coco_results))
    scores = np.array([r.get("score", np.nan) for r in coco_results], dtype=np.float64)
    # XYWH_ABS, or XYWHA_ABS for rotated boxes (padded with an angle of 0 for the check)
    boxes = np.array([(list(r["bbox"]) + [0.0])[:5] if len(r.get("bbox", ())) in (4, 5) else [0.0] * 5
                      for r in coco_results], dtype=np.float64).reshape(-1, 5)
    checks = [
        (~image_ok, f"are for image ids that are not in the ground truth of {dataset_name!r}"),
        (image_ok & ~np.isfinite(scores), "have a score that is not a finite number"),
        (image_ok & ~np.isfinite(boxes).all(axis=1), "have a box with NaN or infinite coordinates"),
        (image_ok & np.isfinite(boxes).all(axis=1) & (boxes[:, 2:4] < 0).any(axis=1),
         "have a box of negative width or height"),
    ]
    keep = np.ones(len(coco_results), dtype=bool)
    for bad, what in checks:
        bad = bad & keep
        if bad.any():
            example = coco_results[int(np.argmax(bad))]
            logger.warning(f"{int(bad.sum())} of {len(coco_results)} predictions {what} (e.g. image "
                           f"{example['image_id']!r}, bbox {example.get('bbox')}, score {example.get('score')}); "
                           "they are ignored")
            keep &= ~bad
    if keep.all():
        return coco_results
    return [r for r, k in zip(coco_results, keep.tolist()) if k]


def _per_category_ap(precisions, class_names):
    """[(name, AP x100)] from COCOeval precision [T, R, K, A, M]: all areas, the last maxDets."""
    per_category = []
    for idx, name in enumerate(class_names):
        precision = precisions[:, :, idx, 0, -1]
        precision = precision[precision > -1]
        ap = float(np.mean(precision)) * 100 if precision.size else float("nan")
        per_category.append((str(name), ap))
    return per_category


def _per_category_table(per_category, metric_name):
    """A pipe table of (category, value) pairs, three pairs per row."""
    num_columns = min(6, len(per_category) * 2)
    flat = list(itertools.chain(*per_category))
    rows = itertools.zip_longest(*[flat[i::num_columns] for i in range(num_columns)])
    return tabulate(rows, tablefmt="pipe", floatfmt=".3f", headers=["category", metric_name] * (num_columns // 2),
                    numalign="left")


def instances_to_coco_json(instances, img_id):
    """The detections of one image as COCO result dicts.

    Args:
        instances (Instances): pred_boxes (Boxes, XYXY_ABS), scores, pred_classes and
            optionally pred_masks (Tensor[N, H, W], bool or probabilities thresholded at 0.5)
            and pred_keypoints (Tensor[N, K, 3]: x, y, score in continuous coordinates).
        img_id: the image's id.

    Returns:
        list[dict]: {"image_id", "category_id" (contiguous class id), "bbox" (XYWH_ABS),
        "score"} plus "segmentation" (RLE with str counts) and "keypoints" (COCO's integer
        pixel convention: 0.5 is subtracted from x and y) when the instances have them.
    """
    num_instances = len(instances)
    if num_instances == 0:
        return []
    boxes = BoxMode.convert(instances.pred_boxes.tensor.numpy(), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS).tolist()
    scores = instances.scores.tolist()
    classes = instances.pred_classes.tolist()
    results = [{"image_id": img_id, "category_id": classes[k], "bbox": boxes[k], "score": scores[k]}
               for k in range(num_instances)]
    if instances.has("pred_masks"):
        for result, rle in zip(results, _encode_masks(instances.pred_masks)):
            result["segmentation"] = rle
    if instances.has("pred_keypoints"):
        keypoints = instances.pred_keypoints
        keypoints = keypoints.tensor if hasattr(keypoints, "tensor") else keypoints
        keypoints = keypoints.detach().to(torch.float64).clone()
        # COCO's annotations put a pixel's keypoint at its integer index; ours at its center.
        keypoints[:, :, :2] -= 0.5
        for result, kps in zip(results, keypoints.flatten(1).tolist()):
            result["keypoints"] = kps
    return results


def _encode_masks(masks):
    """COCO RLEs (str counts) of Tensor[N, H, W] masks."""
    masks = masks.tensor if hasattr(masks, "tensor") else masks
    masks = masks if masks.dtype == torch.bool else masks > 0.5
    # pycocotools wants a Fortran-ordered uint8 [H, W, N] array.
    array = np.asfortranarray(masks.permute(1, 2, 0).numpy().astype(np.uint8))
    rles = mask_util.encode(array)
    for rle in rles:
        # json cannot write bytes; COCO's own tools decode the counts the same way.
        rle["counts"] = rle["counts"].decode("utf-8")
    return rles


# ---------------------------------------------------------------------------- proposals
_PROPOSAL_AREA_SUFFIXES = {"all": "", "small": "s", "medium": "m", "large": "l"}


def _box_proposal_metrics(predictions, gt_getter) -> Dict[str, float]:
    """AR@100 and AR@1000 (x100) over all, small, medium and large objects, logged as a table
    (the COCO and LVIS evaluators' "box_proposals" results)."""
    res = {}
    for limit in (100, 1000):
        for area, suffix in _PROPOSAL_AREA_SUFFIXES.items():
            stats = _evaluate_box_proposals(predictions, gt_getter, area=area, limit=limit)
            res[f"AR{suffix}@{limit:d}"] = float(stats["ar"].item() * 100)
    logger.info("Proposal metrics: \n" + create_small_table(res))
    return res
_PROPOSAL_AREA_RANGES = {
    "all": (0**2, 1e5**2),
    "small": (0**2, 32**2),
    "medium": (32**2, 96**2),
    "large": (96**2, 1e5**2),
    "96-128": (96**2, 128**2),
    "128-256": (128**2, 256**2),
    "256-512": (256**2, 512**2),
    "512-inf": (512**2, 1e5**2),
}


def _save_box_proposals(predictions, output_dir):
    # The pickle layout of Detectron2's box_proposals.pkl, which its tools read.
    data = {
        "boxes": [p["proposals"].proposal_boxes.tensor.numpy() for p in predictions],
        "objectness_logits": [p["proposals"].objectness_logits.numpy() for p in predictions],
        "ids": [p["image_id"] for p in predictions],
        "bbox_mode": BoxMode.XYXY_ABS.value,
    }
    with PathManager.open(os.path.join(output_dir, "box_proposals.pkl"), "wb") as f:
        pickle.dump(data, f)


def _coco_gt_boxes_getter(coco_api):
    """image_id -> (Tensor[G, 4] XYWH_ABS, Tensor[G] areas) of the image's non-crowd annotations."""
    def get(image_id):
        anns = [a for a in coco_api.loadAnns(coco_api.getAnnIds(imgIds=image_id)) if not a.get("iscrowd", 0)]
        boxes = torch.as_tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        areas = torch.as_tensor([a["area"] for a in anns], dtype=torch.float32)
        return boxes, areas
    return get


def _evaluate_box_proposals(dataset_predictions, gt_getter, thresholds=None, area="all", limit=None):
    """Recall of the proposals at IoU thresholds .5:.05:.95 and its mean, AR.

    Detectron's fast recall (not COCOeval's): each image's proposals (best objectness first, at
    most `limit`) are assigned greedily, one ground-truth box at a time, to the best-covered
    ground truth; a ground-truth box counts as recalled at threshold t if its assigned IoU >= t.

    Args:
        gt_getter (callable): image_id -> (boxes Tensor[G, 4] XYWH_ABS, areas Tensor[G]).
        area (str): one of _PROPOSAL_AREA_RANGES; ground truth outside the range is left out.

    Returns:
        dict: "ar", "recalls" (per threshold), "thresholds", "gt_overlaps", "num_pos".
    """
    if area not in _PROPOSAL_AREA_RANGES:
        raise ValueError(f"unknown area range {area!r}; expected one of {list(_PROPOSAL_AREA_RANGES)}")
    low, high = _PROPOSAL_AREA_RANGES[area]
    gt_overlaps, num_pos = [], 0
    for prediction in dataset_predictions:
        proposals = prediction["proposals"]
        order = proposals.objectness_logits.sort(descending=True)[1]
        gt_boxes, gt_areas = gt_getter(prediction["image_id"])
        if len(gt_boxes) == 0 or len(order) == 0:
            continue
        gt_boxes = gt_boxes[(gt_areas >= low) & (gt_areas <= high)]
        num_pos += len(gt_boxes)
        if len(gt_boxes) == 0:
            continue
        if limit is not None:
            order = order[:limit]
        gt_xyxy = Boxes(BoxMode.convert(gt_boxes, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS))
        overlaps = pairwise_iou(proposals.proposal_boxes[order], gt_xyxy)
        gt_overlaps.append(_greedy_gt_coverage(overlaps))
    gt_overlaps = torch.sort(torch.cat(gt_overlaps))[0] if gt_overlaps else torch.zeros(0)
    if thresholds is None:
        thresholds = torch.arange(0.5, 0.95 + 1e-5, 0.05, dtype=torch.float32)
    if num_pos == 0:
        logger.warning(f"no ground-truth box in area range {area!r}; proposal recall is NaN")
    recalls = torch.stack([(gt_overlaps >= t).float().sum() / float(num_pos) if num_pos else
                           torch.tensor(float("nan")) for t in thresholds])
    return {"ar": recalls.mean(), "recalls": recalls, "thresholds": thresholds, "gt_overlaps": gt_overlaps,
            "num_pos": num_pos}


def _greedy_gt_coverage(overlaps):
    """IoU each ground-truth box gets when, min(P, G) times, the ground truth best covered by a
    free proposal takes that proposal (Tensor[P, G] in, Tensor[G] out, 0 for uncovered)."""
    overlaps = overlaps.clone()
    coverage = torch.zeros(overlaps.shape[1])
    for j in range(min(overlaps.shape)):
        best_per_gt, best_proposal = overlaps.max(dim=0)
        best_iou, gt_index = best_per_gt.max(dim=0)
        coverage[j] = best_iou
        overlaps[best_proposal[gt_index], :] = -1
        overlaps[:, gt_index] = -1
    return coverage


# ---------------------------------------------------------------------------- COCOeval
class _CustomMaxDetsSummary:
    """`summarize()` for box / mask AP with any maxDets[2] (pycocotools reads AP at a fixed
    100 detections and gives -1 otherwise). Keypoints keep pycocotools' summary."""

    def summarize(self):
        if self.params.iouType == "keypoints":
            return super().summarize()
        if not self.eval:
            raise RuntimeError("summarize() needs evaluate() and accumulate() to have run first")
        low, mid, high = self.params.maxDets[:3]
        specs = [
            (True, None, "all", high), (True, 0.5, "all", high), (True, 0.75, "all", high),
            (True, None, "small", high), (True, None, "medium", high), (True, None, "large", high),
            (False, None, "all", low), (False, None, "all", mid), (False, None, "all", high),
            (False, None, "small", high), (False, None, "medium", high), (False, None, "large", high),
        ]
        self.stats = np.array([self._summary_value(*spec) for spec in specs])

    def _summary_value(self, average_precision, iou_threshold, area, max_dets):
        p = self.params
        area_index = [i for i, label in enumerate(p.areaRngLbl) if label == area]
        max_dets_index = [i for i, m in enumerate(p.maxDets) if m == max_dets]
        values = self.eval["precision" if average_precision else "recall"]
        if iou_threshold is not None:
            values = values[np.where(np.isclose(p.iouThrs, iou_threshold))[0]]
        if average_precision:
            values = values[:, :, :, area_index][..., max_dets_index]
        else:
            values = values[:, :, area_index][..., max_dets_index]
        values = values[values > -1]
        mean = float(np.mean(values)) if values.size else -1.0
        kind = "Average Precision  (AP)" if average_precision else "Average Recall     (AR)"
        iou = f"{p.iouThrs[0]:0.2f}:{p.iouThrs[-1]:0.2f}" if iou_threshold is None else f"{iou_threshold:0.2f}"
        print(f" {kind} @[ IoU={iou:<9} | area={area:>6s} | maxDets={max_dets:>3d} ] = {mean:0.3f}")
        return mean


class COCOevalMaxDets(_CustomMaxDetsSummary, COCOeval):
    """pycocotools' COCOeval whose summary reads AP at params.maxDets[2], whatever its value."""


class _COCOevalOptMaxDets(_CustomMaxDetsSummary, COCOeval_opt):
    """COCOeval_opt whose summary reads AP at params.maxDets[2], whatever its value."""


def _load_results(coco_gt, coco_results):
    """COCO object of the detections, built as pycocotools' loadRes does (which cannot take an
    empty list)."""
    if coco_results:
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_gt.loadRes(coco_results)
    coco_dt = COCO()
    coco_dt.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                       "categories": copy.deepcopy(coco_gt.dataset.get("categories", []))}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
    return coco_dt


def _read_results_file(path):
    try:
        with PathManager.open(path, "r") as f:
            results = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"results file {path} is not valid JSON: {e}") from e
    if not isinstance(results, list):
        raise ValueError(f"results file {path} must hold a JSON list of detections, got a {type(results).__name__}")
    return results


def _check_keypoint_counts(coco_gt, coco_results, sigmas):
    num_sigmas = len(sigmas)
    gt_with_keypoints = next((a for a in coco_gt.anns.values() if "keypoints" in a), None)
    if gt_with_keypoints is None:
        raise ValueError("keypoint evaluation: the ground truth has no annotation with 'keypoints'")
    num_gt = len(gt_with_keypoints["keypoints"]) // 3
    num_dt = len(coco_results[0]["keypoints"]) // 3 if coco_results else num_gt
    if not num_sigmas == num_dt == num_gt:
        raise ValueError(f"keypoint evaluation: the predictions have {num_dt} keypoints, the ground truth {num_gt}, "
                         f"and there are {num_sigmas} OKS sigmas; they must agree (set kpt_oks_sigmas, or "
                         "cfg.TEST.KEYPOINT_OKS_SIGMAS, to one sigma per keypoint of the dataset)")


def _evaluate_predictions_on_coco(coco_gt, coco_results, iou_type, kpt_oks_sigmas=None, cocoeval_fn=COCOeval_opt,
                                  img_ids=None, max_dets_per_image=None):
    """Run COCO's evaluation of `coco_results` and return the summarized COCOeval.

    Args:
        coco_gt (COCO): the ground truth.
        coco_results (list[dict] or str): COCO result dicts, or the path of a JSON file of them;
            may be empty (every AP is then 0 where there is ground truth).
        iou_type (str): "bbox", "segm" or "keypoints".
        kpt_oks_sigmas (sequence[float] or None): OKS sigmas; None/empty: COCO's 17.
        cocoeval_fn (type): COCOeval_opt (fast) or pycocotools' COCOeval.
        img_ids (list or None): the images to evaluate (default: all).
        max_dets_per_image (list[int] or None): params.maxDets for bbox / segm, [1, 10, 100]
            by default; AP is read at its third entry.
    """
    if iou_type not in _TASKS:
        raise ValueError(f"iou_type must be one of {list(_TASKS)}, got {iou_type!r}")
    if isinstance(coco_results, (str, os.PathLike)):
        coco_results = _read_results_file(os.fspath(coco_results))
    needed = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}[iou_type]
    lacking = next((r for r in coco_results if needed not in r), None)
    if lacking is not None:
        raise ValueError(f"{iou_type} evaluation needs a {needed!r} in every prediction; the prediction for image "
                         f"{lacking.get('image_id')!r} has only {sorted(lacking)} (did the model predict "
                         f"{'masks' if iou_type == 'segm' else iou_type}?)")
    # loadRes writes into the dicts; the caller's stay as they are.
    drop = ("bbox",) if iou_type == "segm" else ()
    # With a "bbox", loadRes would take the box area as a mask's area, which moves masks
    # between the small / medium / large ranges.
    coco_results = [{k: v for k, v in r.items() if k not in drop} for r in coco_results]
    if not coco_results:
        logger.warning(f"No predictions to evaluate for {iou_type}; every AP is 0 (NaN where there is no ground "
                       "truth)")
    coco_dt = _load_results(coco_gt, coco_results)

    max_dets = list(_DEFAULT_MAX_DETS if max_dets_per_image is None else max_dets_per_image)
    if len(max_dets) < 3:
        raise ValueError(f"max_dets_per_image must list at least 3 limits such as [1, 10, 100], got {max_dets}")
    if max_dets[2] != 100 and iou_type != "keypoints":
        cocoeval_fn = _COCOevalOptMaxDets if issubclass(cocoeval_fn, COCOeval_opt) else COCOevalMaxDets
    coco_eval = cocoeval_fn(coco_gt, coco_dt, iou_type)
    if iou_type != "keypoints":
        coco_eval.params.maxDets = max_dets
    if img_ids is not None:
        coco_eval.params.imgIds = img_ids
    if iou_type == "keypoints":
        if kpt_oks_sigmas is not None and len(kpt_oks_sigmas):
            coco_eval.params.kpt_oks_sigmas = np.array(kpt_oks_sigmas, dtype=np.float64)
        _check_keypoint_counts(coco_gt, coco_results, coco_eval.params.kpt_oks_sigmas)

    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval
