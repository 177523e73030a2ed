"""PascalVOCDetectionEvaluator against a slow, line-by-line reimplementation of the devkit's
voc_eval logic (result text files, per-detection loop), on VOC files written in each test."""
import os
import uuid

import numpy as np
import pytest
import torch

from detzoo.data import MetadataCatalog
from detzoo.evaluation import PascalVOCDetectionEvaluator
from detzoo.evaluation.pascal_voc_evaluation import voc_ap, voc_eval
from detzoo.structures import Boxes, Instances

CLASSES = ["cat", "dog", "bird"]


def write_voc(root, rng, num_images=12):
    """VOCdevkit-like folder: Annotations/*.xml, ImageSets/Main/test.txt; returns the gt."""
    os.makedirs(os.path.join(root, "Annotations"))
    os.makedirs(os.path.join(root, "ImageSets", "Main"))
    names = [f"{i:06d}" for i in range(num_images)]
    gt = {}
    for name in names:
        objects = []
        for _ in range(int(rng.integers(0, 5))):
            x0, y0 = int(rng.integers(1, 80)), int(rng.integers(1, 60))
            x1, y1 = x0 + int(rng.integers(2, 40)), y0 + int(rng.integers(2, 40))
            objects.append((str(rng.choice(CLASSES)), int(rng.random() < 0.2), [x0, y0, x1, y1]))
        gt[name] = objects
        xml = ["<annotation><size><width>120</width><height>100</height><depth>3</depth></size>"]
        for cls, difficult, (x0, y0, x1, y1) in objects:
            xml.append(f"<object><name>{cls}</name><pose>Unspecified</pose><truncated>0</truncated>"
                       f"<difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
                       f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")
        xml.append("</annotation>")
        with open(os.path.join(root, "Annotations", name + ".xml"), "w") as f:
            f.write("".join(xml))
    with open(os.path.join(root, "ImageSets", "Main", "test.txt"), "w") as f:
        f.write("\n".join(names) + "\n")
    return names, gt


def make_batches(rng, names, gt):
    """Model outputs in continuous coordinates: jittered ground truth (xmin - 1) and noise."""
    batches = []
    for name in names:
        boxes, classes = [], []
        for cls, _, (x0, y0, x1, y1) in gt[name]:
            if rng.random() < 0.8:
                boxes.append([x0 - 1 + rng.normal(0, 2), y0 - 1 + rng.normal(0, 2), x1 + rng.normal(0, 2),
                              y1 + rng.normal(0, 2)])
                classes.append(CLASSES.index(cls))
        for _ in range(int(rng.integers(0, 4))):
            x0, y0 = rng.uniform(0, 80), rng.uniform(0, 60)
            boxes.append([x0, y0, x0 + rng.uniform(2, 40), y0 + rng.uniform(2, 40)])
            classes.append(int(rng.integers(0, len(CLASSES))))
        inst = Instances((100, 120), pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)),
                         scores=torch.tensor(rng.uniform(0, 1, len(boxes)).round(2), dtype=torch.float32),
                         pred_classes=torch.tensor(classes, dtype=torch.int64))
        batches.append(([{"image_id": name}], [{"instances": inst}]))
    return batches


# ---------------------------------------------------------------- reference: the devkit, slowly
def reference_ap(lines, gt, names, classname, threshold, use_07):
    recs = {n: [o for o in gt[n] if o[0] == classname] for n in names}
    used = {n: [False] * len(recs[n]) for n in names}
    npos = sum(1 for n in names for o in recs[n] if not o[1])
    split = [line.split(" ") for line in lines]
    confidence = np.array([float(s[1]) for s in split])
    order = np.argsort(-confidence)
    tp, fp = [], []
    for d in order:
        image, box = split[d][0], [float(v) for v in split[d][2:]]
        best, best_j = -np.inf, -1
        for j, (_, _, g) in enumerate(recs[image]):
            iw = max(min(g[2], box[2]) - max(g[0], box[0]) + 1.0, 0.0)
            ih = max(min(g[3], box[3]) - max(g[1], box[1]) + 1.0, 0.0)
            inter = iw * ih
            union = ((box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
                     + (g[2] - g[0] + 1.0) * (g[3] - g[1] + 1.0) - inter)
            if inter / union > best:
                best, best_j = inter / union, j
        if best > threshold:
            if not recs[image][best_j][1]:
                if not used[image][best_j]:
                    tp.append(1.0), fp.append(0.0)
                    used[image][best_j] = True
                else:
                    tp.append(0.0), fp.append(1.0)
            else:
                tp.append(0.0), fp.append(0.0)
        else:
            tp.append(0.0), fp.append(1.0)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / npos
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07:
        return sum((max(p for p, r in zip(prec, rec) if r >= t) if any(r >= t for r in rec) else 0.0) / 11.0
                   for t in np.arange(0.0, 1.1, 0.1))
    mrec, mpre = [0.0] + list(rec) + [1.0], [0.0] + list(prec) + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])


def result_lines(batches):
    """The devkit's result-file lines per class, as Detectron2 writes them."""
    lines = {c: [] for c in range(len(CLASSES))}
    for inputs, outputs in batches:
        inst = outputs[0]["instances"]
        for box, score, cls in zip(inst.pred_boxes.tensor.numpy(), inst.scores.tolist(), inst.pred_classes.tolist()):
            xmin, ymin, xmax, ymax = box
            lines[cls].append(f"{inputs[0]['image_id']} {score:.3f} {xmin + 1:.1f} {ymin + 1:.1f} "
                              f"{xmax:.1f} {ymax:.1f}")
    return lines


@pytest.mark.parametrize("year", [2007, 2012])
def test_matches_devkit_logic(tmp_path, year):
    rng = np.random.default_rng(year)
    root = str(tmp_path / "VOC")
    names, gt = write_voc(root, rng)
    batches = make_batches(rng, names, gt)
    name = f"voc_eval_test_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(dirname=root, split="test", year=year, thing_classes=CLASSES)
    evaluator = PascalVOCDetectionEvaluator(name)
    evaluator.reset()
    for inputs, outputs in batches:
        evaluator.process(inputs, outputs)
    results = evaluator.evaluate()["bbox"]

    lines = result_lines(batches)
    per_threshold = {t: np.mean([reference_ap(lines[c], gt, names, cls, t / 100, year == 2007) * 100
                                 for c, cls in enumerate(CLASSES)]) for t in range(50, 100, 5)}
    assert results["AP50"] == pytest.approx(per_threshold[50], abs=1e-9)
    assert results["AP75"] == pytest.approx(per_threshold[75], abs=1e-9)
    assert results["AP"] == pytest.approx(np.mean(list(per_threshold.values())), abs=1e-9)
    assert 0 < results["AP75"] < results["AP50"] < 100

    # the devkit-style entry point on result files
    template = str(tmp_path / "det_{}.txt")
    for c, cls in enumerate(CLASSES):
        with open(template.format(cls), "w") as f:
            f.write("\n".join(lines[c]))
        rec, prec, ap = voc_eval(template, os.path.join(root, "Annotations", "{}.xml"),
                                 os.path.join(root, "ImageSets", "Main", "test.txt"), cls, 0.5, year == 2007)
        assert ap == pytest.approx(reference_ap(lines[c], gt, names, cls, 0.5, year == 2007), abs=1e-12)


def test_voc_ap_hand_computed():
    # recall 0.5 at precision 1, then recall 1 at precision 2/3
    rec, prec = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    assert voc_ap(rec, prec) == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11)
    assert voc_ap(np.zeros(0), np.zeros(0)) == 0.0


def test_difficult_and_duplicates_hand_computed(tmp_path):
    """Cats: one difficult, one regular; one dog. The cat detection on the difficult cat counts
    for nothing, the other finds the regular cat: cat AP = 1. Dog detections, best first: a miss,
    the dog, a duplicate of it (a false positive): precision 0, 1/2, 1/3 at recall 0, 1, 1, so
    dog AP = 1/2. Every threshold gives (1 + 1/2) / 2."""
    root = str(tmp_path / "VOC")
    os.makedirs(os.path.join(root, "Annotations"))
    os.makedirs(os.path.join(root, "ImageSets", "Main"))

    def obj(name, difficult, box):
        x0, y0, x1, y1 = box
        return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin>"
                f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")

    with open(os.path.join(root, "Annotations", "a.xml"), "w") as f:
        f.write("<annotation>" + obj("cat", 1, (1, 1, 10, 10)) + obj("cat", 0, (31, 1, 45, 10))
                + obj("dog", 0, (21, 21, 40, 40)) + "</annotation>")
    with open(os.path.join(root, "ImageSets", "Main", "val.txt"), "w") as f:
        f.write("a\n")
    name = f"voc_hand_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(dirname=root, split="val", year=2012, thing_classes=["cat", "dog"])
    # continuous coordinates: xmin - 1
    boxes = [[0.0, 0, 10, 10], [30, 0, 45, 10], [0, 30, 10, 45], [20, 20, 40, 40], [20, 20, 40, 40]]
    inst = Instances((50, 50), pred_boxes=Boxes(torch.tensor(boxes)), scores=torch.tensor([0.9, 0.6, 0.95, 0.8, 0.7]),
                     pred_classes=torch.tensor([0, 0, 1, 1, 1]))
    evaluator = PascalVOCDetectionEvaluator(name)
    evaluator.reset()
    evaluator.process([{"image_id": "a"}], [{"instances": inst}])
    evaluator.process([{"image_id": "not_in_the_set"}], [{"instances": inst[:1]}])
    results = evaluator.evaluate()["bbox"]
    assert results == pytest.approx({"AP": 75.0, "AP50": 75.0, "AP75": 75.0})


def test_bad_metadata():
    name = f"voc_bad_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(dirname="/nonexistent", split="val", year=2010, thing_classes=["a"])
    with pytest.raises(ValueError, match="2007 or 2012"):
        PascalVOCDetectionEvaluator(name)
    with pytest.raises(ValueError, match="no 'dirname'"):
        PascalVOCDetectionEvaluator(f"voc_missing_{uuid.uuid4().hex[:8]}")
