"""COCO box AP for rotated boxes (XYWHA_ABS), e.g. of RotatedRCNN: COCO's metrics with the IoU of
rotated boxes (the angle enters only through the overlap, as in Detectron2)."""
import itertools
import logging

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.cocoeval import COCOeval

from detzoo.structures import BoxMode, RotatedBoxes, pairwise_iou_rotated

from .coco_evaluation import COCOEvaluator, _drop_invalid_results, _load_results, _map_to_dataset_category_ids

__all__ = ["RotatedCOCOeval", "RotatedCOCOEvaluator"]

logger = logging.getLogger(__name__)


class RotatedCOCOeval(COCOeval):
    """pycocotools' COCOeval (bbox) that takes 5-number XYWHA_ABS boxes too; a 4-number box
    compared with a rotated one is read as XYWH_ABS with angle 0."""

    @staticmethod
    def is_rotated(box_list):
        """Whether `box_list` (list of boxes or [N, k] array) holds 5-number boxes."""
        if isinstance(box_list, np.ndarray):
            return box_list.ndim == 2 and box_list.shape[1] == 5
        return bool(box_list) and all(isinstance(b, (list, np.ndarray)) and len(b) == 5 for b in box_list)

    @staticmethod
    def boxlist_to_tensor(boxlist, output_box_dim):
        """Tensor[N, output_box_dim] of a list or array of 4- or 5-number boxes."""
        if isinstance(boxlist, np.ndarray):
            boxes = torch.from_numpy(boxlist).float()
        elif isinstance(boxlist, list):
            if not boxlist:
                return torch.zeros((0, output_box_dim), dtype=torch.float32)
            boxes = torch.tensor(boxlist, dtype=torch.float32)
        else:
            raise TypeError(f"boxes must be a list or a numpy array, got {type(boxlist).__name__}")
        if boxes.shape[1] == output_box_dim:
            return boxes
        if boxes.shape[1] == 4 and output_box_dim == 5:
            return BoxMode.convert(boxes, BoxMode.XYWH_ABS, BoxMode.XYWHA_ABS)
        raise ValueError(f"cannot convert {boxes.shape[1]}-number boxes to {output_box_dim}-number boxes")

    def compute_iou_dt_gt(self, dt, gt, is_crowd):
        """IoU [D, G] of detection and ground-truth boxes."""
        if not (self.is_rotated(dt) or self.is_rotated(gt)):
            return mask_util.iou(dt, gt, is_crowd)
        if any(is_crowd):
            raise ValueError("rotated-box evaluation does not support crowd annotations (iscrowd=1)")
        dt = self.boxlist_to_tensor(dt, output_box_dim=5)
        gt = self.boxlist_to_tensor(gt, output_box_dim=5)
        return pairwise_iou_rotated(RotatedBoxes(dt), RotatedBoxes(gt)).numpy()

    def computeIoU(self, imgId, catId):
        p = self.params
        if p.iouType != "bbox":
            raise ValueError(f"RotatedCOCOeval evaluates boxes only, not {p.iouType!r}")
        if p.useCats:
            gt, dt = self._gts[imgId, catId], self._dts[imgId, catId]
        else:
            gt = [g for c in p.catIds for g in self._gts[imgId, c]]
            dt = [d for c in p.catIds for d in self._dts[imgId, c]]
        if len(gt) == 0 and len(dt) == 0:
            return []
        order = np.argsort([-d["score"] for d in dt], kind="mergesort")
        dt = [dt[i] for i in order][: p.maxDets[-1]]
        return self.compute_iou_dt_gt([d["bbox"] for d in dt], [g["bbox"] for g in gt],
                                      [int(g["iscrowd"]) for g in gt])


class RotatedCOCOEvaluator(COCOEvaluator):
    """COCOEvaluator for rotated boxes: pred_boxes may be RotatedBoxes (XYWHA_ABS), the
    ground truth's "bbox" 5 numbers. Box AP only, with pycocotools' (Python) matching."""

    def __init__(self, dataset_name, tasks=None, distributed=True, output_dir=None, **kwargs):
        kwargs.setdefault("use_fast_impl", False)  # the C++ matching has no rotated IoU
        super().__init__(dataset_name, tasks, distributed, output_dir, **kwargs)

    def process(self, inputs, outputs):
        for input, output in zip(inputs, outputs):
            prediction = {"image_id": input["image_id"]}
            if "instances" in output:
                instances = output["instances"].to(self._cpu_device)
                prediction["instances"] = self.instances_to_json(instances, input["image_id"])
            if "proposals" in output:
                prediction["proposals"] = output["proposals"].to(self._cpu_device)
            if len(prediction) > 1:
                self._predictions.append(prediction)

    def instances_to_json(self, instances, img_id):
        """COCO result dicts; "bbox" is XYWHA_ABS for rotated boxes, XYWH_ABS otherwise."""
        if len(instances) == 0:
            return []
        boxes = instances.pred_boxes.tensor.numpy()
        if boxes.shape[1] == 4:
            boxes = BoxMode.convert(boxes, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
        return [{"image_id": img_id, "category_id": c, "bbox": b, "score": s}
                for b, s, c in zip(boxes.tolist(), instances.scores.tolist(), instances.pred_classes.tolist())]

    def _eval_predictions(self, predictions, img_ids=None):
        coco_results = list(itertools.chain(*[p.get("instances", []) for p in predictions]))
        _map_to_dataset_category_ids(coco_results, self._metadata, self._coco_api)
        coco_results = _drop_invalid_results(coco_results, self._coco_api.getImgIds(), self._dataset_name)
        self._save_results(coco_results, "coco_instances_results.json")
        if not self._do_evaluation:
            logger.info("Annotations are not available for evaluation.")
            return
        tasks = self._tasks or ("bbox",)
        if tuple(tasks) != ("bbox",):
            raise ValueError(f"RotatedCOCOEvaluator evaluates the task 'bbox' only, got {tasks}")
        coco_eval = self._evaluate_predictions_on_coco(self._coco_api, coco_results, img_ids)
        self._results["bbox"] = self._derive_coco_results(coco_eval, "bbox",
                                                          class_names=self._metadata.get("thing_classes"))

    def _evaluate_predictions_on_coco(self, coco_gt, coco_results, img_ids=None):
        coco_dt = _load_results(coco_gt, coco_results)
        coco_eval = RotatedCOCOeval(coco_gt, coco_dt, iouType="bbox")
        if img_ids is not None:
            coco_eval.params.imgIds = img_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
        return coco_eval
