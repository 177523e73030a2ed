"""Cityscapes' official evaluation (the `cityscapesscripts` package): instance-level AP and
pixel-level IoU. Predictions are written in the files the scripts read, into a temporary folder
shared by the processes of one machine; the main process runs the scripts.

These evaluators do not work across machines (the folder is local), as in Detectron2.
"""
import contextlib
import glob
import io
import json
import logging
import os
import tempfile
from collections import OrderedDict

import numpy as np
import torch
from PIL import Image

from detzoo.data import MetadataCatalog
from detzoo.utils import comm
from detzoo.utils.file_io import PathManager

from .evaluator import DatasetEvaluator

__all__ = ["CityscapesInstanceEvaluator", "CityscapesSemSegEvaluator"]

logger = logging.getLogger(__name__)


class CityscapesEvaluator(DatasetEvaluator):
    """Base of the Cityscapes evaluators: the shared folder of prediction files."""

    def __init__(self, dataset_name):
        """
        Args:
            dataset_name (str): a registered Cityscapes dataset whose metadata has "gt_dir"
                (the gtFine/<split> folder) and "thing_classes" / "stuff_classes".
        """
        self._dataset_name = dataset_name
        self._metadata = MetadataCatalog.get(dataset_name)
        if not hasattr(self._metadata, "gt_dir"):
            raise ValueError(f"{type(self).__name__}: dataset {dataset_name!r} has no gt_dir metadata")
        self._cpu_device = torch.device("cpu")
        self._working_dir = None

    def reset(self):
        self._cleanup()
        self._working_dir = tempfile.TemporaryDirectory(prefix="cityscapes_eval_")
        # Every process writes into rank 0's folder; the others drop theirs.
        self._temp_dir = comm.all_gather(self._working_dir.name)[0]
        if self._temp_dir != self._working_dir.name:
            self._working_dir.cleanup()
        self._predicted = set()
        logger.info(f"Writing cityscapes results to temporary directory {self._temp_dir} ...")

    def _cleanup(self):
        if self._working_dir is not None:
            self._working_dir.cleanup()
            self._working_dir = None

    def _script_args(self, script):
        """Once every process has written its predictions: on the main process, the arguments of
        the cityscapesscripts evaluation module `script`, pointed at them; None elsewhere."""
        comm.synchronize()
        if comm.get_rank() > 0:
            return None
        logger.info(f"Evaluating results under {self._temp_dir} ...")
        args = script.args
        args.predictionPath = os.path.abspath(self._temp_dir)
        args.predictionWalk = None
        args.JSONOutput = False
        args.colorized = False
        args.quiet = True
        return args

    def _ground_truth_files(self, pattern):
        """The ground-truth files matching `pattern` under gt_dir/<city>/ that have a prediction;
        the others are left out with a warning."""
        gt_dir = PathManager.get_local_path(self._metadata.gt_dir)
        files = sorted(glob.glob(os.path.join(gt_dir, "*", pattern)))
        if not files:
            searched = os.path.join(gt_dir, "*", pattern)
            raise FileNotFoundError(f"no ground truth for evaluation: nothing matches {searched}")
        predicted = [f for f in files if _frame_key(f) in self._predicted]
        if len(predicted) < len(files):
            logger.warning(f"{len(files) - len(predicted)} of the {len(files)} ground-truth images of "
                           f"{self._dataset_name!r} have no prediction; they are left out of the evaluation")
        if not predicted:
            raise RuntimeError(f"{type(self).__name__}: no prediction matches a ground-truth image of "
                               f"{self._dataset_name!r} (were any images processed?)")
        return [os.path.abspath(f) for f in predicted]


def _frame_key(path):
    """"<city>_<sequence>_<frame>" of a Cityscapes file name."""
    return "_".join(os.path.basename(path).split("_")[:3])


@contextlib.contextmanager
def _legacy_numpy(**aliases):
    """numpy functions that unmaintained evaluation packages still call, put back for the
    duration of the block (only those numpy no longer has)."""
    added = [name for name in aliases if name not in np.__dict__]
    for name in added:
        setattr(np, name, aliases[name])
    try:
        yield
    finally:
        for name in added:
            delattr(np, name)


def _in1d(ar1, ar2, assume_unique=False, invert=False, **kwargs):
    return np.isin(ar1, ar2, assume_unique=assume_unique, invert=invert, **kwargs).ravel()


def _write_json(data, path):
    # cityscapesscripts' writer cannot take the numpy integers numpy 2's count_nonzero returns.
    with open(path, "w") as f:
        json.dump(data, f, default=lambda o: o.item() if isinstance(o, np.generic) else o.__dict__, sort_keys=True,
                  indent=4)


@contextlib.contextmanager
def _running_cityscapes_script(script, working_dir):
    """Run `script` (a cityscapesscripts evaluation module) in `working_dir` (it writes
    matches.json into the current folder), quietly, made to work with numpy 2 (np.in1d, numpy
    integers in its JSON dumps), turning its sys.exit on errors into exceptions."""
    output = io.StringIO()
    writer = getattr(script, "writeDict2JSON", None)
    if writer is not None:
        script.writeDict2JSON = _write_json
    try:
        with contextlib.redirect_stdout(output), contextlib.chdir(working_dir), _legacy_numpy(in1d=_in1d):
            yield
    except SystemExit:
        raise RuntimeError("cityscapesscripts failed: " + output.getvalue().strip()[-2000:]) from None
    finally:
        if writer is not None:
            script.writeDict2JSON = writer


class CityscapesInstanceEvaluator(CityscapesEvaluator):
    """Instance segmentation AP and AP50 with cityscapesscripts' evalInstanceLevelSemanticLabeling.

    Must be called from every process (it synchronizes); the main process evaluates.
    """

    def process(self, inputs, outputs):
        """
        Args:
            inputs (list[dict]): with "file_name" (the leftImg8bit image).
            outputs (list[dict]): with "instances" (pred_classes indexing thing_classes, which
                must be Cityscapes label names, scores, pred_masks Tensor[N, H, W]).
        """
        from cityscapesscripts.helpers.labels import name2label

        for input, output in zip(inputs, outputs):
            basename = os.path.splitext(os.path.basename(input["file_name"]))[0]
            self._predicted.add(_frame_key(basename))
            lines = []
            if "instances" in output:
                instances = output["instances"].to(self._cpu_device)
                masks = instances.pred_masks.numpy() if len(instances) else []
                for i, (class_id, score) in enumerate(zip(instances.pred_classes.tolist(), instances.scores.tolist())):
                    class_name = self._metadata.thing_classes[class_id]
                    if class_name not in name2label:
                        raise ValueError(f"thing class {class_name!r} of {self._dataset_name!r} is not a Cityscapes "
                                         "label name")
                    png = f"{basename}_{i}_{class_name}.png"
                    Image.fromarray((np.asarray(masks[i]) > 0.5).astype(np.uint8) * 255).save(
                        os.path.join(self._temp_dir, png))
                    lines.append(f"{png} {name2label[class_name].id} {score}\n")
            # The scripts need a prediction file for every image, empty or not.
            with open(os.path.join(self._temp_dir, basename + "_pred.txt"), "w") as f:
                f.writelines(lines)

    def evaluate(self):
        """
        Returns:
            dict: {"segm": {"AP", "AP50"}} (x100) on the main process; {} elsewhere.
        """
        import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as cityscapes_eval

        args = self._script_args(cityscapes_eval)
        if args is None:
            return {}
        args.gtInstancesFile = os.path.join(self._temp_dir, "gtInstances.json")
        gt_files = self._ground_truth_files("*_gtFine_instanceIds.png")
        with _running_cityscapes_script(cityscapes_eval, self._temp_dir):
            predictions = [cityscapes_eval.getPrediction(gt, args) for gt in gt_files]
            results = cityscapes_eval.evaluateImgLists(predictions, gt_files, args)["averages"]
        self._cleanup()
        return OrderedDict(segm={"AP": results["allAp"] * 100, "AP50": results["allAp50%"] * 100})


class CityscapesSemSegEvaluator(CityscapesEvaluator):
    """Pixel-level IoU (classes and categories, plain and instance-weighted) with
    cityscapesscripts' evalPixelLevelSemanticLabeling.

    Must be called from every process (it synchronizes); the main process evaluates.
    """

    def process(self, inputs, outputs):
        """
        Args:
            inputs (list[dict]): with "file_name".
            outputs (list[dict]): with "sem_seg" (Tensor[C, H, W] of scores over the 19
                Cityscapes train ids).
        """
        from cityscapesscripts.helpers.labels import trainId2label

        for input, output in zip(inputs, outputs):
            basename = os.path.splitext(os.path.basename(input["file_name"]))[0]
            self._predicted.add(_frame_key(basename))
            train_ids = output["sem_seg"].argmax(dim=0).to(self._cpu_device).numpy()
            # train id -> Cityscapes label id; classes ignored in evaluation stay 255
            lookup = np.full(max(trainId2label) + 2, 255, dtype=np.uint8)
            for train_id, label in trainId2label.items():
                if 0 <= train_id < 255 and not label.ignoreInEval:
                    lookup[train_id] = label.id
            pred = lookup[np.clip(train_ids, 0, len(lookup) - 1)]
            Image.fromarray(pred).save(os.path.join(self._temp_dir, basename + "_pred.png"))

    def evaluate(self):
        """
        Returns:
            dict: {"sem_seg": {"IoU", "iIoU", "IoU_sup", "iIoU_sup"}} (x100) on the main
            process; {} elsewhere.
        """
        import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as cityscapes_eval

        args = self._script_args(cityscapes_eval)
        if args is None:
            return {}
        gt_files = self._ground_truth_files("*_gtFine_labelIds.png")
        with _running_cityscapes_script(cityscapes_eval, self._temp_dir):
            predictions = [cityscapes_eval.getPrediction(args, gt) for gt in gt_files]
            results = cityscapes_eval.evaluateImgLists(predictions, gt_files, args)
        self._cleanup()
        return OrderedDict(sem_seg={
            "IoU": 100.0 * results["averageScoreClasses"],
            "iIoU": 100.0 * results["averageScoreInstClasses"],
            "IoU_sup": 100.0 * results["averageScoreCategories"],
            "iIoU_sup": 100.0 * results["averageScoreInstCategories"],
        })
