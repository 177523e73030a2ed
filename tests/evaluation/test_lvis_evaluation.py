"""LVISEvaluator against the `lvis` package's LVISEval run directly.

The fabricated sets exercise every federated rule: detections of categories not verified for an
image (dropped), of categories known absent (false positives), of not-exhaustive categories
(unmatched ones ignored), zero-area detections, all three area ranges, tied scores, and more
detections per image than the limit.
"""
import contextlib
import copy
import io
import json
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detzoo.data import MetadataCatalog
from detzoo.evaluation import LVISEvaluator
from detzoo.evaluation.lvis_evaluation import _evaluate_predictions_on_lvis
from detzoo.structures import Boxes, Instances

lvis = pytest.importorskip("lvis")
# lvis 0.5.3 calls logger.warn
pytestmark = pytest.mark.filterwarnings("ignore:The .warn. method is deprecated:DeprecationWarning")

HEIGHT, WIDTH = 70, 90
CATEGORY_IDS = [1, 2, 3, 4, 5, 6, 7]
FREQUENCIES = ["r", "c", "f", "f", "c", "r", "f"]
METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"]


def make_lvis(rng, num_images=10):
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        present = sorted(rng.choice(CATEGORY_IDS, size=int(rng.integers(1, 4)), replace=False).tolist())
        others = [c for c in CATEGORY_IDS if c not in present]
        negative = sorted(rng.choice(others, size=int(rng.integers(0, 3)), replace=False).tolist())
        not_exhaustive = [c for c in present if rng.random() < 0.4]
        images.append({"id": image_id, "height": HEIGHT, "width": WIDTH, "neg_category_ids": negative,
                       "not_exhaustive_category_ids": not_exhaustive,
                       "coco_url": f"http://images.cocodataset.org/val2017/{image_id:012d}.jpg"})
        for category in present:
            for _ in range(int(rng.integers(1, 4))):
                w, h = float(rng.integers(3, 50)), float(rng.integers(3, 50))
                x, y = float(rng.integers(0, WIDTH - w)), float(rng.integers(0, HEIGHT - h))
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                    "bbox": [x, y, w, h], "area": w * h,
                                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    categories = [{"id": c, "name": f"cat{c}", "synonyms": [f"cat{c}"], "frequency": f, "image_count": 1}
                  for c, f in zip(CATEGORY_IDS, FREQUENCIES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def rle_of_box(x0, y0, x1, y1):
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8, order="F")
    mask[int(round(y0)):int(round(y1)), int(round(x0)):int(round(x1))] = 1
    rle = mask_util.encode(mask)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def make_results(rng, dataset, extra_per_image=(0, 8)):
    """LVIS result dicts (LVIS category ids): jittered ground truth and random detections."""
    results = []
    for ann in dataset["annotations"]:
        if rng.random() < 0.8:
            x, y, w, h = (np.array(ann["bbox"]) + rng.uniform(-3, 3, 4)).tolist()
            results.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                            "bbox": [x, y, max(w, 1.0), max(h, 1.0)], "score": round(float(rng.uniform(0, 1)), 1)})
    for image in dataset["images"]:
        for _ in range(int(rng.integers(*extra_per_image))):
            x, y = rng.uniform(0, WIDTH - 20), rng.uniform(0, HEIGHT - 20)
            w, h = (rng.uniform(1, 60), rng.uniform(1, 60)) if rng.random() < 0.9 else (0.0, 5.0)
            results.append({"image_id": image["id"], "category_id": int(rng.choice(CATEGORY_IDS)),
                            "bbox": [x, y, w, h], "score": round(float(rng.uniform(0, 1)), 1)})
    for r in results:
        x, y, w, h = r["bbox"]
        r["segmentation"] = rle_of_box(x, y, min(x + w, WIDTH), min(y + h, HEIGHT))
    return results


def official(dataset, results, iou_type, max_dets, monkeypatch):
    """The lvis package alone (np.float restored for it: lvis 0.5.3 predates numpy 1.24)."""
    monkeypatch.setattr(np, "float", float, raising=False)
    gt = lvis.LVIS.__new__(lvis.LVIS)
    gt.logger = lvis.lvis.logging.getLogger("lvis")
    gt.dataset = copy.deepcopy(dataset)
    gt._create_index()
    results = copy.deepcopy(results)
    if iou_type == "segm":
        for r in results:
            r.pop("bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        dt = lvis.LVISResults(gt, results, max_dets=max_dets)
        ev = lvis.LVISEval(gt, dt, iou_type)
        ev.params.max_dets = max_dets
        ev.run()
    monkeypatch.undo()
    return [float(ev.results[m] * 100) if ev.results[m] >= 0 else float("nan") for m in METRICS]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_fast_path_matches_lvis_eval(seed, iou_type, monkeypatch):
    rng = np.random.default_rng(seed)
    dataset = make_lvis(rng)
    results = make_results(rng, dataset)
    max_dets = [300, 6, -1][seed]
    ours = _evaluate_predictions_on_lvis(dataset, copy.deepcopy(results), iou_type, max_dets_per_image=max_dets)
    expected = official(dataset, results, iou_type, max_dets, monkeypatch)
    np.testing.assert_allclose([ours[m] for m in METRICS], expected, atol=1e-9)
    assert np.isfinite(ours["AP"]) and 0 < ours["AP"] < 100


def test_federated_rules_hand_computed(monkeypatch):
    """One image with one ground-truth box of category 1 (not exhaustive) and category 2 known
    absent. A perfect detection of 1, an unmatched one of 1 (ignored: not exhaustive), one of 2
    (a false positive of category 2, whose AP is then undefined: no ground truth) and one of 3
    (not verified: dropped) leave AP = 100."""
    dataset = {
        "images": [{"id": 1, "height": 100, "width": 100, "neg_category_ids": [2], "not_exhaustive_category_ids": [1]}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600.0,
                         "segmentation": [[10, 10, 50, 10, 50, 50, 10, 50]]}],
        "categories": [{"id": c, "name": str(c), "frequency": "f"} for c in (1, 2, 3)],
    }
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [60, 60, 30, 30], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.8},
        {"image_id": 1, "category_id": 2, "bbox": [10, 10, 40, 40], "score": 0.95},
        {"image_id": 1, "category_id": 3, "bbox": [10, 10, 40, 40], "score": 0.99},
    ]
    ours = _evaluate_predictions_on_lvis(dataset, copy.deepcopy(results), "bbox")
    assert ours["AP"] == pytest.approx(100.0)
    assert np.isnan(ours["APr"]) and np.isnan(ours["APs"])
    assert [ours[m] for m in METRICS] == pytest.approx(official(dataset, results, "bbox", 300, monkeypatch),
                                                       nan_ok=True)
    # The same unmatched detection in an exhaustive category is a false positive.
    dataset["images"][0]["not_exhaustive_category_ids"] = []
    ours = _evaluate_predictions_on_lvis(dataset, copy.deepcopy(results), "bbox")
    assert ours["AP"] < 100.0


@pytest.fixture
def lvis_dataset(tmp_path):
    rng = np.random.default_rng(5)
    dataset = make_lvis(rng, num_images=6)
    json_file = tmp_path / "lvis.json"
    json_file.write_text(json.dumps(dataset))
    name = f"lvis_eval_test_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(json_file=str(json_file), thing_classes=[f"cat{c}" for c in CATEGORY_IDS],
                                  thing_dataset_id_to_contiguous_id={c: i for i, c in enumerate(CATEGORY_IDS)})
    return name, dataset, make_results(rng, dataset, extra_per_image=(0, 4))


def batches_of(results):
    """Model outputs (contiguous classes, XYXY boxes, masks) carrying `results`."""
    by_image = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    batches = []
    for image_id, rs in by_image.items():
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in rs)], dtype=torch.float64)
        masks = torch.from_numpy(np.stack([mask_util.decode(r["segmentation"]) for r in rs])).bool()
        inst = Instances((HEIGHT, WIDTH), pred_boxes=Boxes(boxes), scores=torch.tensor([r["score"] for r in rs]),
                         pred_classes=torch.tensor([CATEGORY_IDS.index(r["category_id"]) for r in rs]),
                         pred_masks=masks)
        batches.append(([{"image_id": image_id}], [{"instances": inst}]))
    return batches


@pytest.mark.parametrize("use_fast_impl", [True, False])
def test_evaluator_end_to_end(lvis_dataset, tmp_path, use_fast_impl, monkeypatch):
    name, dataset, results = lvis_dataset
    results = [r for r in results if r["bbox"][2] > 0]
    evaluator = LVISEvaluator(name, output_dir=str(tmp_path), use_fast_impl=use_fast_impl)
    evaluator.reset()
    for inputs, outputs in batches_of(results):
        evaluator.process(inputs, outputs)
    out = evaluator.evaluate()
    assert sorted(out) == ["bbox", "segm"]
    written = json.loads((tmp_path / "lvis_instances_results.json").read_text())
    assert {r["category_id"] for r in written} <= set(CATEGORY_IDS)
    for task in ("bbox", "segm"):
        expected = official(dataset, written, task, 300, monkeypatch)
        np.testing.assert_allclose([out[task][m] for m in METRICS], expected, atol=1e-6)


def test_empty_and_bad_predictions(lvis_dataset):
    name, _, _ = lvis_dataset
    evaluator = LVISEvaluator(name, tasks=("bbox",))
    evaluator.reset()
    out = evaluator.evaluate()
    assert out["bbox"]["AP"] == 0.0
    inst = Instances((HEIGHT, WIDTH), pred_boxes=Boxes(torch.tensor([[0.0, 0, 5, 5]])), scores=torch.tensor([0.5]),
                     pred_classes=torch.tensor([len(CATEGORY_IDS)]))
    evaluator.reset()
    evaluator.process([{"image_id": 1}], [{"instances": inst}])
    with pytest.raises(ValueError, match="has class 7.*7 classes"):
        evaluator.evaluate()
    with pytest.raises(ValueError, match="unknown tasks"):
        LVISEvaluator(name, tasks=("keypoints",))
