"""Semantic segmentation metrics from a confusion matrix accumulated over the dataset: mean IoU,
frequency-weighted IoU, mean class accuracy, pixel accuracy, and IoU / accuracy per class
(http://cocodataset.org/#stuff-eval)."""
import itertools
import json
import logging
import os
from collections import OrderedDict

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image

from detzoo.data import DatasetCatalog, MetadataCatalog
from detzoo.utils import comm
from detzoo.utils.file_io import PathManager

from .evaluator import DatasetEvaluator

__all__ = ["SemSegEvaluator", "load_image_into_numpy_array"]

logger = logging.getLogger(__name__)


def load_image_into_numpy_array(filename, copy=False, dtype=None):
    """The image file `filename` (any PathManager path) as a numpy array (`copy`: always a new
    array; otherwise one only where `dtype` requires it)."""
    with PathManager.open(filename, "rb") as f:
        image = Image.open(f)
        # numpy 2's copy=False means "never copy", which a dtype change cannot honour.
        return np.array(image, dtype=dtype) if copy else np.asarray(image, dtype=dtype)


class SemSegEvaluator(DatasetEvaluator):
    """mIoU, fwIoU, mACC, pACC and per-class IoU / ACC of semantic segmentation predictions.

    Pixels whose ground truth is the dataset's `ignore_label` are not counted.
    """

    def __init__(self, dataset_name, distributed=True, output_dir=None, *,
                 sem_seg_loading_fn=load_image_into_numpy_array, num_classes=None, ignore_label=None):
        """
        Args:
            dataset_name (str): a registered dataset whose records have "file_name" and
                "sem_seg_file_name", and whose metadata has "stuff_classes" and
                "ignore_label".
            distributed (bool): sum the confusion matrices of all processes on the main one.
            output_dir (str or None): where "sem_seg_predictions.json" (COCO-stuff RLE results)
                and "sem_seg_evaluation.pth" (the metrics) are written.
            sem_seg_loading_fn (callable): (file name, dtype=...) -> [H, W] array of labels.
            num_classes, ignore_label: deprecated; they are read from the metadata (if given,
                num_classes must agree with it, and ignore_label overrides it).
        """
        meta = MetadataCatalog.get(dataset_name)
        if num_classes is not None:
            logger.warning("SemSegEvaluator(num_classes) is deprecated: it is read from the metadata")
        if ignore_label is not None:
            logger.warning("SemSegEvaluator(ignore_label) is deprecated: it is read from the metadata")
        if not hasattr(meta, "stuff_classes"):
            raise ValueError(f"SemSegEvaluator: dataset {dataset_name!r} has no stuff_classes metadata")
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._cpu_device = torch.device("cpu")
        self.sem_seg_loading_fn = sem_seg_loading_fn
        self._class_names = list(meta.stuff_classes)
        self._num_classes = len(self._class_names)
        if num_classes is not None and num_classes != self._num_classes:
            raise ValueError(f"SemSegEvaluator: num_classes={num_classes}, but dataset {dataset_name!r} has "
                             f"{self._num_classes} stuff_classes")
        self._ignore_label = ignore_label if ignore_label is not None else meta.get("ignore_label")
        id_map = meta.get("stuff_dataset_id_to_contiguous_id")
        self._contiguous_id_to_dataset_id = {v: k for k, v in id_map.items()} if id_map is not None else None
        self.input_file_to_gt_file = {record["file_name"]: record["sem_seg_file_name"]
                                      for record in DatasetCatalog.get(dataset_name)}

    def reset(self):
        # [prediction, ground truth]; the extra last ground-truth column collects ignored pixels.
        self._conf_matrix = np.zeros((self._num_classes + 1, self._num_classes + 1), dtype=np.int64)
        self._predictions = []

    def process(self, inputs, outputs):
        """
        Args:
            inputs (list[dict]): with "file_name" (the key to the ground-truth file).
            outputs (list[dict]): with "sem_seg" (Tensor[C, H, W] of scores, C = number of
                stuff classes); the predicted class of a pixel is the argmax over C.
        """
        for input, output in zip(inputs, outputs):
            pred = self._predicted_labels(output["sem_seg"], input["file_name"])
            gt = self._ground_truth(input["file_name"], pred.shape)
            self._conf_matrix += np.bincount(
                (self._num_classes + 1) * pred.reshape(-1) + gt.reshape(-1), minlength=self._conf_matrix.size,
            ).reshape(self._conf_matrix.shape)
            if self._output_dir:
                self._predictions.extend(self.encode_json_sem_seg(pred, input["file_name"]))

    def _predicted_labels(self, scores, file_name):
        if scores.ndim != 3 or scores.shape[0] != self._num_classes:
            raise ValueError(f"{file_name}: sem_seg must be a Tensor[C, H, W] with C = {self._num_classes} classes, "
                             f"got shape {tuple(scores.shape)}")
        return scores.argmax(dim=0).to(self._cpu_device).numpy().astype(np.int64)

    def _ground_truth(self, file_name, shape):
        """[H, W] int64 labels, ignored pixels set to num_classes."""
        if file_name not in self.input_file_to_gt_file:
            raise KeyError(f"{file_name} is not an image of dataset {self._dataset_name!r}")
        gt_file = self.input_file_to_gt_file[file_name]
        gt = np.asarray(self.sem_seg_loading_fn(gt_file, dtype=np.int64))
        if gt.shape != shape:
            raise ValueError(f"the prediction for {file_name} is {shape[0]}x{shape[1]}, but its ground truth {gt_file} "
                             f"is {'x'.join(map(str, gt.shape))}")
        ignored = gt == self._ignore_label if self._ignore_label is not None else np.zeros(gt.shape, dtype=bool)
        bad = ((gt < 0) | (gt >= self._num_classes)) & ~ignored
        if bad.any():
            raise ValueError(f"{gt_file} has labels {np.unique(gt[bad])[:10].tolist()} outside [0, "
                             f"{self._num_classes - 1}] that are not the ignore label {self._ignore_label}")
        return np.where(ignored, self._num_classes, gt)

    def evaluate(self):
        """
        Returns:
            OrderedDict: {"sem_seg": {"mIoU", "fwIoU", "IoU-<class>"..., "mACC", "pACC",
            "ACC-<class>"...}} (x100; a class absent from the ground truth has NaN IoU and ACC);
            {} on processes other than the main one.
        """
        if self._distributed:
            comm.synchronize()
            matrices = comm.gather(self._conf_matrix, dst=0)
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            if not comm.is_main_process():
                return {}
            conf_matrix = np.sum(matrices, axis=0)
        else:
            conf_matrix, predictions = self._conf_matrix, self._predictions
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            with PathManager.open(os.path.join(self._output_dir, "sem_seg_predictions.json"), "w") as f:
                f.write(json.dumps(predictions))

        res = _metrics(conf_matrix, self._class_names)
        if self._output_dir:
            with PathManager.open(os.path.join(self._output_dir, "sem_seg_evaluation.pth"), "wb") as f:
                torch.save(res, f)
        results = OrderedDict({"sem_seg": res})
        logger.info(results)
        return results

    def encode_json_sem_seg(self, sem_seg, input_file_name):
        """COCO-stuff results of one [H, W] label map: one RLE per label present
        (http://cocodataset.org/#format-results), with dataset category ids."""
        json_list = []
        for label in np.unique(sem_seg).tolist():
            if self._contiguous_id_to_dataset_id is not None:
                if label not in self._contiguous_id_to_dataset_id:
                    raise ValueError(f"label {label} is not in stuff_dataset_id_to_contiguous_id of "
                                     f"{self._dataset_name!r}")
                dataset_id = self._contiguous_id_to_dataset_id[label]
            else:
                dataset_id = int(label)
            mask = np.asfortranarray((sem_seg == label).astype(np.uint8)[:, :, None])
            rle = mask_util.encode(mask)[0]
            rle["counts"] = rle["counts"].decode("utf-8")
            json_list.append({"file_name": input_file_name, "category_id": dataset_id, "segmentation": rle})
        return json_list


def _metrics(conf_matrix, class_names):
    """The metrics (x100) of a [prediction, ground truth] confusion matrix whose last row and
    column are the ignored pixels."""
    num_classes = len(class_names)
    valid = conf_matrix[:-1, :-1].astype(np.float64)
    tp = np.diagonal(valid)
    pos_gt = valid.sum(axis=0)
    pos_pred = valid.sum(axis=1)
    union = pos_gt + pos_pred - tp
    acc_valid = pos_gt > 0
    iou_valid = acc_valid & (union > 0)
    acc = np.full(num_classes, np.nan)
    iou = np.full(num_classes, np.nan)
    acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
    iou[iou_valid] = tp[iou_valid] / union[iou_valid]
    if not acc_valid.any():
        logger.warning("SemSegEvaluator: no ground-truth pixel was evaluated (no prediction, or only ignored "
                       "pixels); the summary metrics are 0")
        miou = fwiou = macc = pacc = 0.0
    else:
        class_weights = pos_gt / pos_gt.sum()
        miou = iou[iou_valid].mean()
        fwiou = np.sum(iou[iou_valid] * class_weights[iou_valid])
        macc = acc[acc_valid].mean()
        pacc = tp.sum() / pos_gt.sum()
    res = {"mIoU": 100 * float(miou), "fwIoU": 100 * float(fwiou)}
    res.update({f"IoU-{name}": 100 * float(iou[i]) for i, name in enumerate(class_names)})
    res.update({"mACC": 100 * float(macc), "pACC": 100 * float(pacc)})
    res.update({f"ACC-{name}": 100 * float(acc[i]) for i, name in enumerate(class_names)})
    return res
