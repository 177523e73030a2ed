"""Panoptic Quality (PQ), segmentation quality (SQ) and recognition quality (RQ), for all
categories, things and stuff (Kirillov et al., "Panoptic Segmentation", CVPR 2019), computed
with the rules of COCO's reference implementation (panopticapi's pq_compute), vectorized, without
writing PNGs.

Per image, a predicted and a ground-truth segment of the same category match when their IoU
exceeds 0.5, where the union leaves out the predicted pixels on unlabeled (VOID) ground truth.
Unmatched ground truth is a false negative unless it is a crowd region; an unmatched prediction
is a false positive unless more than half of it lies on VOID or on a crowd region of its
category. The segments of ground-truth images without a prediction are false negatives (the
reference tool refuses such a set). Per category: PQ = sum(IoU of matches) / (TP + FP/2 + FN/2), SQ = sum(IoU) / TP,
RQ = TP / (TP + FP/2 + FN/2); the reported figures average the categories with TP + FP + FN > 0.
"""
import itertools
import json
import logging
import os
from collections import OrderedDict

import numpy as np
from PIL import Image
from tabulate import tabulate

from detzoo.data import MetadataCatalog
from detzoo.utils import comm
from detzoo.utils.file_io import PathManager

from .evaluator import DatasetEvaluator

__all__ = ["COCOPanopticEvaluator", "pq_from_stats", "rgb2id", "id2rgb"]

logger = logging.getLogger(__name__)

# Segment id 0 of a panoptic PNG is unlabeled (VOID), unless the segment list says otherwise.
VOID = 0
# Pairs (ground-truth id, predicted id) are packed in one int64; PNG ids have 24 bits.
_OFFSET = 256 * 256 * 256
_MATCH_IOU = 0.5


def rgb2id(color):
    """Segment ids [H, W] (int64) of a panoptic PNG's [H, W, 3] colors: R + 256 G + 256^2 B."""
    color = np.asarray(color)
    if color.ndim == 3:
        color = color.astype(np.int64)
        return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]
    return color.astype(np.int64)


def id2rgb(id_map):
    """The [H, W, 3] uint8 colors of segment ids [H, W] (the inverse of rgb2id)."""
    id_map = np.asarray(id_map, dtype=np.int64)
    return np.stack([id_map % 256, id_map // 256 % 256, id_map // (256 * 256) % 256], axis=-1).astype(np.uint8)


class COCOPanopticEvaluator(DatasetEvaluator):
    """PQ / SQ / RQ of panoptic predictions against a COCO-panoptic-format ground truth.

    Must be called from every process (it gathers); the metrics come out on the main one.
    """

    def __init__(self, dataset_name, output_dir=None):
        """
        Args:
            dataset_name (str): a registered dataset whose metadata has "panoptic_json",
                "panoptic_root", "thing_dataset_id_to_contiguous_id",
                "stuff_dataset_id_to_contiguous_id" (and "label_divisor" for predictions given
                without segments_info).
            output_dir (str or None): where "predictions.json" (COCO panoptic format, the
                segments with dataset category ids) is written.
        """
        self._dataset_name = dataset_name
        self._metadata = MetadataCatalog.get(dataset_name)
        for key in ("panoptic_json", "panoptic_root"):
            if not hasattr(self._metadata, key):
                raise ValueError(f"COCOPanopticEvaluator: dataset {dataset_name!r} has no {key!r} metadata")
        self._thing_contiguous_id_to_dataset_id = _reverse(self._metadata.get("thing_dataset_id_to_contiguous_id"))
        self._stuff_contiguous_id_to_dataset_id = _reverse(self._metadata.get("stuff_dataset_id_to_contiguous_id"))
        self._output_dir = output_dir
        if output_dir is not None:
            PathManager.mkdirs(output_dir)
        self._gt = None

    def _ground_truth(self):
        if self._gt is None:
            self._gt = _PanopticGroundTruth(self._metadata.panoptic_json, self._metadata.panoptic_root)
        return self._gt

    def reset(self):
        gt = self._ground_truth()
        self._stats = np.zeros((4, len(gt.category_ids)))  # rows: tp, fp, fn, sum of matched IoUs
        self._image_ids = []
        self._predictions = []

    def process(self, inputs, outputs):
        """
        Args:
            inputs (list[dict]): with "image_id" and "file_name".
            outputs (list[dict]): with "panoptic_seg" = (Tensor[H, W] of segment ids,
                segments_info). segments_info lists {"id", "category_id", "isthing"} (a
                contiguous id of the thing or stuff classes; without "isthing", a dataset id);
                id 0 is unlabeled. With segments_info None, the ids are
                category * label_divisor + instance and -1 is unlabeled.
        """
        gt = self._ground_truth()
        for input, output in zip(inputs, outputs):
            panoptic_img, segments_info = output["panoptic_seg"]
            panoptic_img = panoptic_img.cpu().numpy().astype(np.int64)
            if segments_info is None:
                panoptic_img, segments_info = self._segments_from_labels(panoptic_img)
            segments_info = [self._convert_category_id(dict(s)) for s in segments_info]
            key = str(input["image_id"])
            annotation = gt.annotations.get(key)
            if annotation is None:
                logger.warning(f"image {input['image_id']!r} is not in the panoptic ground truth of "
                               f"{self._dataset_name!r}; its prediction is ignored")
                continue
            if key in self._image_ids:
                logger.warning(f"image {input['image_id']!r} was predicted twice; the second prediction is ignored")
                continue
            self._image_ids.append(key)
            self._stats += _image_stats(gt, annotation, panoptic_img, segments_info)
            if self._output_dir:
                file_name = os.path.splitext(os.path.basename(input["file_name"]))[0] + ".png"
                self._predictions.append({"image_id": input["image_id"], "file_name": file_name,
                                          "segments_info": segments_info})

    def _segments_from_labels(self, panoptic_img):
        """segments_info of a map of category * label_divisor + instance ids (-1: unlabeled),
        and the map shifted by one so that unlabeled becomes 0 (as Detectron2 does)."""
        label_divisor = self._metadata.get("label_divisor")
        if label_divisor is None:
            raise ValueError(f"panoptic_seg without segments_info needs the label_divisor metadata of "
                             f"{self._dataset_name!r}")
        thing_ids = set((self._metadata.get("thing_dataset_id_to_contiguous_id") or {}).values())
        segments = []
        for label in np.unique(panoptic_img).tolist():
            if label == -1:
                continue
            if label < 0:
                raise ValueError(f"panoptic_seg has the negative label {label}; only -1 (unlabeled) is allowed")
            category = label // label_divisor
            segments.append({"id": label + 1, "category_id": category, "isthing": category in thing_ids})
        return panoptic_img + 1, segments

    def _convert_category_id(self, segment_info):
        isthing = segment_info.pop("isthing", None)
        if isthing is None:
            return segment_info  # already a dataset category id
        table = self._thing_contiguous_id_to_dataset_id if isthing else self._stuff_contiguous_id_to_dataset_id
        kind = "thing" if isthing else "stuff"
        if table is None or segment_info["category_id"] not in table:
            raise ValueError(f"segment {segment_info.get('id')} has {kind} class {segment_info['category_id']}, "
                             f"which {kind}_dataset_id_to_contiguous_id of {self._dataset_name!r} does not have")
        segment_info["category_id"] = table[segment_info["category_id"]]
        return segment_info

    def evaluate(self):
        """
        Returns:
            OrderedDict: {"panoptic_seg": {"PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th",
            "PQ_st", "SQ_st", "RQ_st"}} (x100; NaN for a group without any scored category);
            {} on processes other than the main one.
        """
        comm.synchronize()
        stats = comm.gather(self._stats, dst=0)
        image_ids = list(itertools.chain(*comm.gather(self._image_ids, dst=0)))
        predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
        if not comm.is_main_process():
            return {}
        gt = self._ground_truth()
        stats = np.sum(stats, axis=0) + self._unpredicted_stats(gt, set(image_ids))
        if self._output_dir:
            self._write_predictions(predictions)

        isthing = gt.isthing
        pq_res = {name: pq_from_stats(stats[:, mask]) for name, mask in
                  (("All", np.ones_like(isthing)), ("Things", isthing), ("Stuff", ~isthing))}
        res = {}
        for name, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
            for metric in ("pq", "sq", "rq"):
                res[metric.upper() + suffix] = 100 * pq_res[name][metric]
        _print_panoptic_results(pq_res)
        return OrderedDict({"panoptic_seg": res})

    def _unpredicted_stats(self, gt, predicted):
        """[4, K] stats of the ground-truth images without a prediction: each of their non-crowd
        segments is a false negative (as COCO's AP counts unpredicted objects as misses)."""
        stats = np.zeros((4, len(gt.category_ids)))
        missing = [key for key in gt.annotations if key not in predicted]
        if not missing:
            return stats
        if not predicted:
            logger.warning(f"COCOPanopticEvaluator: received no predictions for {self._dataset_name!r}; PQ is 0")
        else:
            logger.warning(f"{len(missing)} of the {len(gt.annotations)} ground-truth images of {self._dataset_name!r} "
                           f"have no prediction (e.g. image {missing[0]}); their segments count as false negatives")
        for key in missing:
            annotation = gt.annotations[key]
            segments = [s for s in annotation["segments_info"] if s.get("iscrowd", 0) != 1]
            categories = _categories(segments, gt, f"image {annotation['image_id']!r} (ground truth)")
            stats[2] += np.bincount(categories, minlength=len(gt.category_ids))
        return stats

    def _write_predictions(self, predictions):
        with PathManager.open(self._metadata.panoptic_json, "r") as f:
            json_data = json.load(f)
        json_data["annotations"] = predictions
        with PathManager.open(os.path.join(self._output_dir, "predictions.json"), "w") as f:
            f.write(json.dumps(json_data))


def _reverse(mapping):
    return None if mapping is None else {v: k for k, v in mapping.items()}


class _PanopticGroundTruth:
    """The panoptic JSON indexed by str(image_id), and its categories."""

    def __init__(self, json_file, root):
        with PathManager.open(json_file, "r") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{json_file} is not valid JSON ({e})") from e
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("annotations", "categories")):
            raise ValueError(f"{json_file} is not a COCO panoptic file: expected 'annotations' and 'categories' lists")
        self.json_file = json_file
        self.root = root
        self.annotations = {str(a["image_id"]): a for a in data["annotations"]}
        self.category_ids = np.array([c["id"] for c in data["categories"]], dtype=np.int64)
        self.category_index = {int(c): i for i, c in enumerate(self.category_ids)}
        self.isthing = np.array([c.get("isthing", 0) == 1 for c in data["categories"]], dtype=bool)

    def segment_map(self, annotation):
        path = os.path.join(self.root, annotation["file_name"])
        with PathManager.open(path, "rb") as f:
            return rgb2id(np.asarray(Image.open(f).convert("RGB")))


def _categories(segments, gt, where):
    categories = np.array([s["category_id"] for s in segments], dtype=np.int64)
    unknown = [c for c in categories.tolist() if c not in gt.category_index]
    if unknown:
        raise ValueError(f"{where}: category ids {sorted(set(unknown))} are not in the categories of {gt.json_file}")
    return np.array([gt.category_index[c] for c in categories.tolist()], dtype=np.int64)


def _index_of(ids, values):
    """Position of each of `values` in the 1-D array `ids`, -1 where absent."""
    if len(ids) == 0:
        return np.full(len(values), -1, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    pos = np.clip(np.searchsorted(ids, values, sorter=order), 0, len(ids) - 1)
    found = ids[order[pos]] == values
    return np.where(found, order[pos], -1)


def _image_stats(gt, annotation, pred_map, pred_segments):
    """[4, K] (tp, fp, fn, sum of matched IoUs) per category of one image."""
    where = f"image {annotation['image_id']!r}"
    gt_map = gt.segment_map(annotation)
    if gt_map.shape != pred_map.shape:
        raise ValueError(f"{where}: the prediction is {pred_map.shape[0]}x{pred_map.shape[1]}, the ground truth "
                         f"{annotation['file_name']} is {gt_map.shape[0]}x{gt_map.shape[1]}")
    if pred_map.size and (pred_map.min() < 0 or pred_map.max() >= _OFFSET):
        raise ValueError(f"{where}: predicted segment ids must be in [0, 2^24), got [{pred_map.min()}, "
                         f"{pred_map.max()}]")
    gt_segments = annotation["segments_info"]
    gt_ids = np.array([s["id"] for s in gt_segments], dtype=np.int64)
    gt_cats = _categories(gt_segments, gt, f"{where} (ground truth)")
    gt_crowd = np.array([s.get("iscrowd", 0) == 1 for s in gt_segments], dtype=bool)
    pred_ids = np.array([s["id"] for s in pred_segments], dtype=np.int64)
    pred_cats = _categories(pred_segments, gt, f"{where} (prediction)")
    pred_area = _predicted_areas(pred_map, pred_ids, where)

    # Joint histogram of (gt id, pred id) over the image.
    pairs, inter = np.unique(gt_map.reshape(-1) * _OFFSET + pred_map.reshape(-1), return_counts=True)
    pair_gt, pair_pred = pairs // _OFFSET, pairs % _OFFSET
    gi, pi = _index_of(gt_ids, pair_gt), _index_of(pred_ids, pair_pred)
    # panopticapi takes a ground-truth segment's area from the JSON when it is there.
    gt_area = np.array([s["area"] if "area" in s else 0 for s in gt_segments], dtype=np.float64)
    missing_area = np.array(["area" not in s for s in gt_segments], dtype=bool)
    if missing_area.any():
        counted = np.bincount(gi[gi >= 0], weights=inter[gi >= 0], minlength=len(gt_ids))
        gt_area[missing_area] = counted[missing_area]
    on_void = np.zeros(len(pred_ids))
    void_pairs = (pair_gt == VOID) & (pi >= 0)
    np.add.at(on_void, pi[void_pairs], inter[void_pairs])

    candidate = (gi >= 0) & (pi >= 0)
    candidate[candidate] = ~gt_crowd[gi[candidate]] & (gt_cats[gi[candidate]] == pred_cats[pi[candidate]])
    g, p, i = gi[candidate], pi[candidate], inter[candidate].astype(np.float64)
    iou = i / (pred_area[p] + gt_area[g] - i - on_void[p])
    matched = iou > _MATCH_IOU
    num_categories = len(gt.category_ids)
    stats = np.zeros((4, num_categories))
    stats[0] = np.bincount(gt_cats[g[matched]], minlength=num_categories)
    stats[3] = np.bincount(gt_cats[g[matched]], weights=iou[matched], minlength=num_categories)

    gt_matched = np.zeros(len(gt_ids), dtype=bool)
    gt_matched[g[matched]] = True
    pred_matched = np.zeros(len(pred_ids), dtype=bool)
    pred_matched[p[matched]] = True
    missed = ~gt_matched & ~gt_crowd
    stats[2] = np.bincount(gt_cats[missed], minlength=num_categories)
    stats[1] = _false_positives(pred_cats, pred_area, pred_matched, on_void, gt_cats, gt_crowd, gi, pi, inter,
                                num_categories)
    return stats


def _predicted_areas(pred_map, pred_ids, where):
    """Pixel count of each predicted segment, checking the map and the segment list agree."""
    labels, counts = np.unique(pred_map, return_counts=True)
    index = _index_of(pred_ids, labels)
    unlisted = labels[(index < 0) & (labels != VOID)]
    if unlisted.size:
        raise ValueError(f"{where}: segment ids {unlisted[:10].tolist()} are in the predicted map but not in "
                         "segments_info")
    if len(np.unique(pred_ids)) != len(pred_ids):
        raise ValueError(f"{where}: segments_info lists a segment id twice")
    area = np.zeros(len(pred_ids))
    area[index[index >= 0]] = counts[index >= 0]
    absent = pred_ids[area == 0]
    if absent.size:
        raise ValueError(f"{where}: segments {absent[:10].tolist()} of segments_info have no pixel in the "
                         "predicted map")
    return area


def _false_positives(pred_cats, pred_area, pred_matched, on_void, gt_cats, gt_crowd, gi, pi, inter, num_categories):
    """Per category, the unmatched predictions of which at most half lies on VOID plus the
    crowd region of their category (panopticapi keeps the last crowd segment of a category)."""
    crowd_of_category = {}
    for index in np.flatnonzero(gt_crowd).tolist():
        crowd_of_category[int(gt_cats[index])] = index
    on_crowd = np.zeros(len(pred_cats))
    if crowd_of_category:
        crowd_gt = np.full(num_categories, -1, dtype=np.int64)
        for category, index in crowd_of_category.items():
            crowd_gt[category] = index
        same_crowd = (gi >= 0) & (pi >= 0)
        same_crowd[same_crowd] = gi[same_crowd] == crowd_gt[pred_cats[pi[same_crowd]]]
        np.add.at(on_crowd, pi[same_crowd], inter[same_crowd])
    ignored = (on_void + on_crowd) / pred_area > 0.5
    false_positive = ~pred_matched & ~ignored
    return np.bincount(pred_cats[false_positive], minlength=num_categories)


def pq_from_stats(stats):
    """{"pq", "sq", "rq", "n"} averaged over the categories of `stats` ([4, K]: tp, fp, fn,
    sum of matched IoUs) that have TP + FP + FN > 0; NaN when there are none."""
    tp, fp, fn, iou = stats
    scored = (tp + fp + fn) > 0
    n = int(scored.sum())
    if n == 0:
        return {"pq": float("nan"), "sq": float("nan"), "rq": float("nan"), "n": 0}
    tp, fp, fn, iou = tp[scored], fp[scored], fn[scored], iou[scored]
    denominator = tp + 0.5 * fp + 0.5 * fn
    sq = np.divide(iou, tp, out=np.zeros_like(iou), where=tp > 0)
    return {"pq": float(np.mean(iou / denominator)), "sq": float(np.mean(sq)), "rq": float(np.mean(tp / denominator)),
            "n": n}


def _print_panoptic_results(pq_res):
    rows = [[name] + [pq_res[name][k] * 100 for k in ("pq", "sq", "rq")] + [pq_res[name]["n"]]
            for name in ("All", "Things", "Stuff")]
    table = tabulate(rows, headers=["", "PQ", "SQ", "RQ", "#categories"], tablefmt="pipe", floatfmt=".3f",
                     stralign="center", numalign="center")
    logger.info("Panoptic Evaluation Results:\n" + table)
