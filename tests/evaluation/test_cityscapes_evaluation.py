"""The Cityscapes evaluators against cityscapesscripts run directly on prediction files this
test writes itself, on a two-image gtFine folder fabricated in the test."""
import contextlib
import io
import json
import os
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from detzoo.data import MetadataCatalog
from detzoo.evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator
from detzoo.structures import Instances

labels = pytest.importorskip("cityscapesscripts.helpers.labels")


@contextlib.contextmanager
def numpy2_compatible_scripts():
    """For the reference runs only: cityscapesscripts 2.3 predates numpy 2 (it calls np.in1d,
    removed in numpy 2.4, and dumps numpy integers with json). The evaluators cope by themselves."""
    import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as ev

    def write(data, path):
        with open(path, "w") as f:
            json.dump(data, f, default=lambda o: o.item() if isinstance(o, np.generic) else o.__dict__)

    with pytest.MonkeyPatch.context() as mp:
        if not hasattr(np, "in1d"):
            mp.setattr(np, "in1d", lambda a, b, invert=False, **kw: np.isin(a, b, invert=invert, **kw).ravel(),
                       raising=False)
        mp.setattr(ev, "writeDict2JSON", write)
        yield


THING_CLASSES = ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
STUFF_CLASSES = [labels.trainId2label[i].name for i in range(19)]
H, W = 64, 128
FRAMES = ["aachen_000000_000019", "aachen_000001_000019"]
# (label name, y0, y1, x0, x1) per image
OBJECTS = [
    [("car", 10, 40, 5, 45), ("person", 20, 60, 60, 75), ("car", 30, 60, 90, 125)],
    [("person", 5, 50, 10, 30), ("car", 35, 63, 40, 100)],
]


def write_gt(root):
    """gtFine/val/aachen/<frame>_gtFine_{labelIds,instanceIds}.png: road with cars and people,
    sky on the top rows. Returns the gt_dir."""
    gt_dir = os.path.join(root, "gtFine", "val")
    os.makedirs(os.path.join(gt_dir, "aachen"))
    for frame, objects in zip(FRAMES, OBJECTS):
        label_ids = np.full((H, W), labels.name2label["road"].id, dtype=np.uint8)
        label_ids[:5] = labels.name2label["sky"].id
        instance_ids = label_ids.astype(np.uint16)  # 16-bit PNGs, as in Cityscapes
        for k, (name, y0, y1, x0, x1) in enumerate(objects):
            label_ids[y0:y1, x0:x1] = labels.name2label[name].id
            instance_ids[y0:y1, x0:x1] = labels.name2label[name].id * 1000 + k
        Image.fromarray(label_ids).save(os.path.join(gt_dir, "aachen", f"{frame}_gtFine_labelIds.png"))
        Image.fromarray(instance_ids).save(os.path.join(gt_dir, "aachen", f"{frame}_gtFine_instanceIds.png"))
    return gt_dir


def register(gt_dir):
    name = f"cityscapes_eval_test_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(gt_dir=gt_dir, thing_classes=THING_CLASSES, stuff_classes=STUFF_CLASSES,
                                  ignore_label=255)
    return name


def instance_predictions(rng, perfect):
    """Per frame: (masks [N, H, W] bool, classes, scores)."""
    result = []
    for objects in OBJECTS:
        masks, classes, scores = [], [], []
        for name, y0, y1, x0, x1 in objects:
            mask = np.zeros((H, W), dtype=bool)
            if perfect:
                mask[y0:y1, x0:x1] = True
            else:
                dy, dx = rng.integers(-4, 5, 2)
                mask[max(y0 + dy, 0):y1 + dy, max(x0 + dx, 0):x1 + dx] = True
            masks.append(mask)
            classes.append(THING_CLASSES.index(name))
            scores.append(0.9 if perfect else float(rng.uniform(0.3, 1)))
        if not perfect:  # a false positive
            mask = np.zeros((H, W), dtype=bool)
            mask[5:25, 100:125] = True
            masks.append(mask)
            classes.append(THING_CLASSES.index("car"))
            scores.append(0.95)
        result.append((np.stack(masks), classes, scores))
    return result


def script_instance_ap(gt_dir, predictions, tmp_path):
    """cityscapesscripts alone, on prediction files written here."""
    import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as ev

    pred_dir = tmp_path / "reference_instances"
    pred_dir.mkdir()
    for frame, (masks, classes, scores) in zip(FRAMES, predictions):
        with open(pred_dir / f"{frame}_leftImg8bit_pred.txt", "w") as f:
            for i, (mask, c, s) in enumerate(zip(masks, classes, scores)):
                Image.fromarray(mask.astype(np.uint8) * 255).save(pred_dir / f"{frame}_mask{i}.png")
                f.write(f"{frame}_mask{i}.png {labels.name2label[THING_CLASSES[c]].id} {s}\n")
    gts = sorted(os.path.abspath(p) for p in
                 [os.path.join(gt_dir, "aachen", f"{f}_gtFine_instanceIds.png") for f in FRAMES])
    ev.args.predictionPath, ev.args.predictionWalk = str(pred_dir), None
    ev.args.gtInstancesFile = str(pred_dir / "gt.json")
    ev.args.JSONOutput, ev.args.quiet = False, True
    cwd = os.getcwd()
    os.chdir(pred_dir)
    try:
        with contextlib.redirect_stdout(io.StringIO()), numpy2_compatible_scripts():
            averages = ev.evaluateImgLists([ev.getPrediction(g, ev.args) for g in gts], gts, ev.args)["averages"]
    finally:
        os.chdir(cwd)
    return averages["allAp"] * 100, averages["allAp50%"] * 100


def run_instances(name, predictions):
    evaluator = CityscapesInstanceEvaluator(name)
    evaluator.reset()
    for frame, (masks, classes, scores) in zip(FRAMES, predictions):
        inst = Instances((H, W), pred_masks=torch.from_numpy(masks), pred_classes=torch.tensor(classes),
                         scores=torch.tensor(scores, dtype=torch.float64))
        evaluator.process([{"file_name": f"leftImg8bit/val/aachen/{frame}_leftImg8bit.png"}], [{"instances": inst}])
    return evaluator.evaluate()["segm"]


def test_instance_ap_matches_cityscapesscripts(tmp_path):
    gt_dir = write_gt(str(tmp_path))
    name = register(gt_dir)
    rng = np.random.default_rng(0)
    noisy = instance_predictions(rng, perfect=False)
    stray = lambda: os.path.exists("matches.json") and os.path.getmtime("matches.json")  # noqa: E731
    before = stray()
    results = run_instances(name, noisy)
    assert stray() == before  # the scripts' matches.json stays out of the working directory
    ap, ap50 = script_instance_ap(gt_dir, noisy, tmp_path)
    assert results["AP"] == pytest.approx(ap) and results["AP50"] == pytest.approx(ap50)
    assert 0 < results["AP"] < 100

    perfect = run_instances(name, instance_predictions(rng, perfect=True))
    assert perfect["AP"] == pytest.approx(100.0) and perfect["AP50"] == pytest.approx(100.0)


def test_sem_seg_matches_cityscapesscripts(tmp_path):
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as ev

    gt_dir = write_gt(str(tmp_path))
    name = register(gt_dir)
    rng = np.random.default_rng(1)
    evaluator = CityscapesSemSegEvaluator(name)
    evaluator.reset()
    ref_dir = tmp_path / "reference_sem_seg"
    ref_dir.mkdir()
    for frame in FRAMES:
        gt = np.asarray(Image.open(os.path.join(gt_dir, "aachen", f"{frame}_gtFine_labelIds.png")))
        train_ids = np.vectorize(lambda i: labels.id2label[i].trainId)(gt)
        noise = rng.random(gt.shape) < 0.2
        train_ids = np.where(noise, rng.integers(0, 19, gt.shape), train_ids)
        scores = torch.nn.functional.one_hot(torch.from_numpy(train_ids).long(), 19).permute(2, 0, 1).float()
        evaluator.process([{"file_name": f"{frame}_leftImg8bit.png"}], [{"sem_seg": scores}])
        label_ids = np.vectorize(lambda t: labels.trainId2label[t].id)(train_ids).astype(np.uint8)
        Image.fromarray(label_ids).save(ref_dir / f"{frame}_leftImg8bit_pred.png")
    results = evaluator.evaluate()["sem_seg"]

    gts = sorted(os.path.abspath(os.path.join(gt_dir, "aachen", f"{f}_gtFine_labelIds.png")) for f in FRAMES)
    ev.args.predictionPath, ev.args.predictionWalk = str(ref_dir), None
    ev.args.JSONOutput, ev.args.quiet = False, True
    with contextlib.redirect_stdout(io.StringIO()), numpy2_compatible_scripts():
        expected = ev.evaluateImgLists([ev.getPrediction(ev.args, g) for g in gts], gts, ev.args)
    assert results["IoU"] == pytest.approx(100 * expected["averageScoreClasses"])
    assert results["iIoU"] == pytest.approx(100 * expected["averageScoreInstClasses"])
    assert results["IoU_sup"] == pytest.approx(100 * expected["averageScoreCategories"])
    assert 0 < results["IoU"] < 100


def test_no_prediction_and_bad_metadata(tmp_path):
    gt_dir = write_gt(str(tmp_path))
    name = register(gt_dir)
    evaluator = CityscapesSemSegEvaluator(name)
    evaluator.reset()
    with pytest.raises(RuntimeError, match="no prediction matches"):
        evaluator.evaluate()
    with pytest.raises(ValueError, match="no gt_dir"):
        CityscapesInstanceEvaluator(f"cityscapes_missing_{uuid.uuid4().hex[:8]}")
