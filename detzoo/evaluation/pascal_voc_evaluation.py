"""PASCAL VOC detection AP, with the arithmetic of the VOC devkit's Python port (voc_eval.py of
py-faster-rcnn, which Detectron2 uses): 1-based inclusive pixel boxes (+1 in widths), "difficult"
objects neither matched nor missed, each detection matched only to the ground truth it overlaps
most, and the VOC2007 11-point or the area AP.

Results: {"bbox": {"AP", "AP50", "AP75"}}, where AP is the mean of the mAPs at IoU .50:.05:.95.
The numbers are those of the Python port, not of the official Matlab devkit (which differs in
rare cases, as Detectron2 notes).
"""
import logging
import os
import xml.etree.ElementTree as ET
from collections import OrderedDict
from functools import lru_cache

import numpy as np
import torch

from detzoo.data import MetadataCatalog
from detzoo.utils import comm
from detzoo.utils.file_io import PathManager

from .evaluator import DatasetEvaluator

__all__ = ["PascalVOCDetectionEvaluator", "parse_rec", "voc_ap", "voc_eval"]

logger = logging.getLogger(__name__)

_IOU_THRESHOLDS = tuple(range(50, 100, 5))  # percent


class PascalVOCDetectionEvaluator(DatasetEvaluator):
    """VOC AP of box detections; must be called from every process (it gathers)."""

    def __init__(self, dataset_name):
        """
        Args:
            dataset_name (str): a registered VOC dataset, whose metadata has "dirname" (holding
                Annotations/ and ImageSets/Main/), "split", "year" (2007 or 2012) and
                "thing_classes".
        """
        self._dataset_name = dataset_name
        meta = MetadataCatalog.get(dataset_name)
        for key in ("dirname", "split", "year", "thing_classes"):
            if not hasattr(meta, key):
                raise ValueError(f"PascalVOCDetectionEvaluator: dataset {dataset_name!r} has no {key!r} metadata "
                                 "(register it with register_pascal_voc)")
        if meta.year not in (2007, 2012):
            raise ValueError(f"PascalVOCDetectionEvaluator: year must be 2007 or 2012, got {meta.year!r}")
        self._anno_file_template = os.path.join(meta.dirname, "Annotations", "{}.xml")
        self._image_set_path = os.path.join(meta.dirname, "ImageSets", "Main", meta.split + ".txt")
        self._class_names = list(meta.thing_classes)
        self._is_2007 = meta.year == 2007
        self._cpu_device = torch.device("cpu")

    def reset(self):
        # class id -> list of (image ids, scores [N], boxes [N, 4]) per processed batch
        self._predictions = {}

    def process(self, inputs, outputs):
        """
        Args:
            inputs (list[dict]): with "image_id" (the VOC file id).
            outputs (list[dict]): with "instances" (pred_boxes XYXY_ABS, scores, pred_classes).
        """
        for input, output in zip(inputs, outputs):
            instances = output["instances"].to(self._cpu_device)
            if len(instances) == 0:
                continue
            boxes = instances.pred_boxes.tensor.numpy().copy()
            # Back to VOC's 1-based pixel indices: the inverse of the dataset loader's shift.
            boxes[:, :2] += 1
            scores, boxes = _as_written(instances.scores.numpy(), boxes)
            classes = instances.pred_classes.numpy()
            for class_id in np.unique(classes).tolist():
                keep = classes == class_id
                self._predictions.setdefault(class_id, []).append(
                    ([input["image_id"]] * int(keep.sum()), scores[keep], boxes[keep]))

    def evaluate(self):
        """
        Returns:
            dict: {"bbox": {"AP", "AP50", "AP75"}} on the main process; {} elsewhere.
        """
        gathered = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return {}
        predictions = _merge_ranks(gathered)
        logger.info(f"Evaluating {self._dataset_name} using the {2007 if self._is_2007 else 2012} metric. Note that "
                    "the results do not use the official Matlab API.")
        image_names = _read_image_set(self._image_set_path)
        records = {name: parse_rec(self._anno_file_template.format(name)) for name in image_names}
        _warn_unknown_images(predictions, records)

        aps = {t: [] for t in _IOU_THRESHOLDS}
        for class_id, class_name in enumerate(self._class_names):
            detections = predictions.get(class_id)
            gt = _ClassGroundTruth(records, image_names, class_name)
            for threshold, ap in zip(_IOU_THRESHOLDS, _evaluate_class(detections, gt, self._is_2007)):
                aps[threshold].append(ap * 100)
        mean_ap = {t: float(np.mean(v)) for t, v in aps.items()}
        return OrderedDict(bbox={"AP": float(np.mean(list(mean_ap.values()))), "AP50": mean_ap[50],
                                 "AP75": mean_ap[75]})


def _as_written(scores, boxes):
    """Scores and boxes rounded as the devkit's result files hold them ("%.3f" and "%.1f")."""
    scores = np.char.mod("%.3f", scores.astype(np.float64)).astype(np.float64)
    boxes = np.char.mod("%.1f", boxes).astype(np.float64).reshape(-1, 4)
    return scores, boxes


def _merge_ranks(gathered):
    """class id -> (image ids list, scores [N], boxes [N, 4]), in process, then rank, order."""
    merged = {}
    for per_rank in gathered:
        for class_id, batches in per_rank.items():
            merged.setdefault(class_id, []).extend(batches)
    return {class_id: ([i for ids, _, _ in batches for i in ids], np.concatenate([s for _, s, _ in batches]),
                       np.concatenate([b for _, _, b in batches]).reshape(-1, 4))
            for class_id, batches in merged.items()}


def _read_image_set(path):
    with PathManager.open(path, "r") as f:
        return [line.strip() for line in f if line.strip()]


def _warn_unknown_images(predictions, records):
    unknown = {i for ids, _, _ in predictions.values() for i in ids if i not in records}
    if unknown:
        logger.warning(f"{len(unknown)} predicted image ids are not in the image set (e.g. {sorted(unknown)[:3]}); "
                       "their detections are ignored")


@lru_cache(maxsize=None)
def parse_rec(filename):
    """The objects of a VOC annotation XML: list of {"name", "pose", "truncated", "difficult",
    "bbox" [xmin, ymin, xmax, ymax] (1-based inclusive pixels)}."""
    with PathManager.open(filename) as f:
        try:
            tree = ET.parse(f)
        except ET.ParseError as e:
            raise ValueError(f"{filename}: not a valid XML file ({e})") from e
    objects = []
    for obj in tree.findall("object"):
        box = obj.find("bndbox")
        if box is None or obj.find("name") is None:
            raise ValueError(f"{filename}: an <object> has no <name> or <bndbox>")
        objects.append({
            "name": obj.find("name").text.strip(),
            "pose": obj.findtext("pose"),
            "truncated": int(obj.findtext("truncated") or 0),
            # A missing <difficult> means the object is not difficult.
            "difficult": int(obj.findtext("difficult") or 0),
            "bbox": [float(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")],
        })
    return objects


class _ClassGroundTruth:
    """The objects of one class over an image set, grouped by image (in image-set order, each
    image's objects in file order)."""

    def __init__(self, records, image_names, class_name):
        self.image_index = {name: i for i, name in enumerate(image_names)}
        boxes, difficult, image = [], [], []
        for i, name in enumerate(image_names):
            for obj in records[name]:
                if obj["name"] == class_name:
                    boxes.append(obj["bbox"])
                    difficult.append(bool(obj["difficult"]))
                    image.append(i)
        self.boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
        self.difficult = np.array(difficult, dtype=bool)
        counts = np.bincount(np.array(image, dtype=np.int64), minlength=len(image_names))
        self.counts = counts
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.num_positives = int((~self.difficult).sum())


def _best_overlaps(det_images, det_boxes, gt):
    """For each detection: the largest IoU with a ground-truth box of its image (-inf if there
    is none) and that box's index (the first one, on ties), with the devkit's +1 arithmetic."""
    num_gt = gt.counts[det_images]
    det_of_pair = np.repeat(np.arange(len(det_images)), num_gt)
    offsets = np.arange(det_of_pair.size) - np.repeat(np.cumsum(num_gt) - num_gt, num_gt)
    gt_of_pair = gt.starts[det_images][det_of_pair] + offsets
    bb, g = det_boxes[det_of_pair], gt.boxes[gt_of_pair]
    iw = np.maximum(np.minimum(g[:, 2], bb[:, 2]) - np.maximum(g[:, 0], bb[:, 0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(g[:, 3], bb[:, 3]) - np.maximum(g[:, 1], bb[:, 1]) + 1.0, 0.0)
    inters = iw * ih
    union = (bb[:, 2] - bb[:, 0] + 1.0) * (bb[:, 3] - bb[:, 1] + 1.0) \
        + (g[:, 2] - g[:, 0] + 1.0) * (g[:, 3] - g[:, 1] + 1.0) - inters
    overlaps = inters / union

    best = np.full(len(det_images), -np.inf)
    np.maximum.at(best, det_of_pair, overlaps)
    is_best = overlaps == best[det_of_pair]
    dets_with_best, first = np.unique(det_of_pair[is_best], return_index=True)
    best_gt = np.full(len(det_images), -1, dtype=np.int64)
    best_gt[dets_with_best] = gt_of_pair[is_best][first]
    return best, best_gt


def _true_false_positives(best, best_gt, difficult, threshold):
    """tp, fp [D] (0/1 floats) of detections sorted by confidence: a detection is a true
    positive if it overlaps its best ground truth by more than `threshold`, that box is not
    difficult, and no higher-scored detection took it; a false positive if it overlaps nothing
    enough or its box was taken; neither if the box is difficult."""
    above = best > threshold
    candidate = above & ~difficult[np.maximum(best_gt, 0)] & (best_gt >= 0)
    tp = np.zeros(len(best))
    fp = np.zeros(len(best))
    candidates = np.flatnonzero(candidate)
    _, first = np.unique(best_gt[candidates], return_index=True)
    tp[candidates[first]] = 1.0
    fp[candidate & (tp == 0)] = 1.0
    fp[~above] = 1.0
    return tp, fp


def voc_ap(rec, prec, use_07_metric=False):
    """AP from recall and precision arrays (detections in confidence order): the mean of the
    best precision at recall >= 0, 0.1, ..., 1 (VOC2007), or the area under the precision
    envelope (VOC2010 and later)."""
    rec, prec = np.asarray(rec, dtype=np.float64), np.asarray(prec, dtype=np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            reached = rec >= t
            ap += (np.max(prec[reached]) if reached.any() else 0.0) / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    envelope = np.maximum.accumulate(mpre[::-1])[::-1]
    changes = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * envelope[changes + 1]))


def _evaluate_class(detections, gt, use_07_metric, thresholds=_IOU_THRESHOLDS):
    """The AP of one class at each IoU threshold (percent), as fractions."""
    if detections is None:
        return [voc_ap(np.zeros(0), np.zeros(0), use_07_metric) for _ in thresholds]
    image_ids, scores, boxes = detections
    known = np.array([i in gt.image_index for i in image_ids], dtype=bool)
    image_ids = [i for i, k in zip(image_ids, known.tolist()) if k]
    scores, boxes = scores[known], boxes[known]
    order = np.argsort(-scores)  # the devkit's (unstable) sort, on the devkit's input order
    det_images = np.array([gt.image_index[image_ids[i]] for i in order], dtype=np.int64)
    best, best_gt = _best_overlaps(det_images, boxes[order], gt)
    if gt.num_positives == 0:
        logger.warning("a class has no (non-difficult) ground truth in the image set; its AP is NaN")
    aps = []
    for threshold in thresholds:
        tp, fp = _true_false_positives(best, best_gt, gt.difficult, threshold / 100.0)
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        with np.errstate(divide="ignore", invalid="ignore"):
            rec = tp / float(gt.num_positives)
        # eps: the first detection may match a difficult object (tp + fp = 0)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps.append(voc_ap(rec, prec, use_07_metric) if gt.num_positives else float("nan"))
    return aps


def voc_eval(detpath, annopath, imagesetfile, classname, ovthresh=0.5, use_07_metric=False):
    """The devkit's entry point: (recall, precision, AP) of one class at one IoU threshold.

    Args:
        detpath (str): detpath.format(classname) is a result file of lines
            "<image id> <score> <xmin> <ymin> <xmax> <ymax>" (1-based pixels).
        annopath (str): annopath.format(image id) is the image's annotation XML.
        imagesetfile (str): a text file of image ids, one per line.
        classname (str): the class evaluated.
        ovthresh (float): IoU threshold (strictly exceeded).
        use_07_metric (bool): VOC2007's 11-point AP.
    """
    image_names = _read_image_set(imagesetfile)
    records = {name: parse_rec(annopath.format(name)) for name in image_names}
    gt = _ClassGroundTruth(records, image_names, classname)
    with PathManager.open(detpath.format(classname), "r") as f:
        lines = [line.strip().split(" ") for line in f if line.strip()]
    image_ids = [line[0] for line in lines]
    scores = np.array([float(line[1]) for line in lines], dtype=np.float64)
    boxes = np.array([[float(v) for v in line[2:6]] for line in lines], dtype=np.float64).reshape(-1, 4)
    unknown = [i for i in image_ids if i not in gt.image_index]
    if unknown:
        raise ValueError(f"{detpath.format(classname)}: detections for images not in {imagesetfile}, e.g. "
                         f"{unknown[:3]}")
    order = np.argsort(-scores)
    det_images = np.array([gt.image_index[image_ids[i]] for i in order], dtype=np.int64)
    best, best_gt = _best_overlaps(det_images, boxes[order], gt)
    tp, fp = _true_false_positives(best, best_gt, gt.difficult, ovthresh)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / float(gt.num_positives)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return rec, prec, voc_ap(rec, prec, use_07_metric)
