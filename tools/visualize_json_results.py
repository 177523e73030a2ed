#!/usr/bin/env python
"""Draw the predictions of a COCO-format results file next to the ground truth.

    python tools/visualize_json_results.py --input output/inference/coco_instances_results.json \
        --output vis/ --dataset coco_2017_val --conf-threshold 0.5

Each image of the dataset with at least one prediction above the threshold is written to
the output directory under its file name: the predictions on the left, the annotations on
the right. The results file is what COCOEvaluator / LVISEvaluator write: a list of
{"image_id", "category_id" (the dataset's id), "bbox" (XYWH_ABS), "score", and optionally
"segmentation" (RLE) and "keypoints"}.
"""
import argparse
import json
import os
from collections import defaultdict

import cv2
import numpy as np
import tqdm

from detzoo.data import DatasetCatalog, MetadataCatalog
from detzoo.structures import Boxes, BoxMode, Instances
from detzoo.utils.file_io import PathManager
from detzoo.utils.logger import setup_logger
from detzoo.utils.visualizer import Visualizer


def create_instances(predictions, image_size, conf_threshold, dataset_id_map):
    """The predictions of one image scoring above `conf_threshold` as an Instances
    (pred_boxes XYXY_ABS, scores, pred_classes, and pred_masks (RLE dicts) / pred_keypoints
    ((N, K, 3) x, y, score) when the results have them), or None when none is above.

    Args:
        predictions (list[dict]): COCO result entries of the image.
        image_size (tuple): (height, width).
        conf_threshold (float): keep scores strictly above it.
        dataset_id_map (callable): the dataset's category id -> contiguous class index.
    """
    scores = np.asarray([p["score"] for p in predictions], dtype=np.float32)
    chosen = np.nonzero(scores > conf_threshold)[0]
    if len(chosen) == 0:
        return None
    kept = [predictions[i] for i in chosen]
    instances = Instances(image_size)
    instances.scores = scores[chosen]
    boxes = np.asarray([p["bbox"] for p in kept], dtype=np.float64).reshape(-1, 4)
    instances.pred_boxes = Boxes(BoxMode.convert(boxes, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS))
    instances.pred_classes = np.asarray([dataset_id_map(p["category_id"]) for p in kept])
    if all("segmentation" in p for p in kept):
        instances.pred_masks = [p["segmentation"] for p in kept]
    if all("keypoints" in p for p in kept):
        instances.pred_keypoints = np.asarray([p["keypoints"] for p in kept], dtype=np.float32).reshape(
            len(kept), -1, 3)
    return instances


def dataset_id_mapper(dataset_name, metadata):
    """The map from a dataset's category ids (as in the results file) to class indices."""
    id_map = metadata.get("thing_dataset_id_to_contiguous_id", None)
    if id_map is not None:
        def dataset_id_map(dataset_id):
            if dataset_id not in id_map:
                raise ValueError(f"category_id {dataset_id} is not a category of {dataset_name} "
                                 f"(its ids: {sorted(id_map)})")
            return id_map[dataset_id]
        return dataset_id_map
    if "lvis" in dataset_name:
        # LVIS ids are 1..#categories, and results use them as they are
        return lambda dataset_id: dataset_id - 1
    raise ValueError(f"dataset {dataset_name} has no thing_dataset_id_to_contiguous_id metadata; cannot map the "
                     "category ids of the results to its classes")


def parse_args(in_args=None):
    parser = argparse.ArgumentParser(description="Draw the predictions of a COCO/LVIS results json file")
    parser.add_argument("--input", required=True, help="the results json file written by the evaluator")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--dataset", default="coco_2017_val", help="name of the dataset the results are on")
    parser.add_argument("--conf-threshold", default=0.5, type=float, help="draw predictions scoring above it")
    return parser.parse_args(in_args)


def _read_results(path):
    with PathManager.open(path, "r") as f:
        results = json.load(f)
    if not isinstance(results, list):
        raise ValueError(f"{path}: expected a list of COCO result dicts, got {type(results).__name__}")
    by_image = defaultdict(list)
    for result in results:
        by_image[result["image_id"]].append(result)
    return by_image


def main(in_args=None):
    """Returns the paths written."""
    args = parse_args(in_args)
    logger = setup_logger()
    predictions_by_image = _read_results(args.input)
    dicts = list(DatasetCatalog.get(args.dataset))
    metadata = MetadataCatalog.get(args.dataset)
    dataset_id_map = dataset_id_mapper(args.dataset, metadata)
    os.makedirs(args.output, exist_ok=True)
    written, skipped = [], 0
    for dic in tqdm.tqdm(dicts):
        image = cv2.imread(dic["file_name"], cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"cannot read the image {dic['file_name']} of {args.dataset}")
        image = image[:, :, ::-1]
        predictions = create_instances(predictions_by_image[dic["image_id"]], image.shape[:2], args.conf_threshold,
                                       dataset_id_map)
        if predictions is None:
            skipped += 1
            continue
        vis_pred = Visualizer(image, metadata).draw_instance_predictions(predictions).get_image()
        vis_gt = Visualizer(image, metadata).draw_dataset_dict(dic).get_image()
        path = os.path.join(args.output, os.path.basename(dic["file_name"]))
        cv2.imwrite(path, np.concatenate((vis_pred, vis_gt), axis=1)[:, :, ::-1])
        written.append(path)
    logger.info(f"Wrote {len(written)} images to {args.output} (predictions | ground truth); {skipped} images "
                f"had no prediction above {args.conf_threshold}")
    return written


if __name__ == "__main__":
    main()
