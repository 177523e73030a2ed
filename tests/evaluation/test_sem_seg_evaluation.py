"""SemSegEvaluator against a hand-worked example and against confusion matrices counted pixel
by pixel, on ground-truth PNGs written in each test."""
import json
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from detzoo.data import DatasetCatalog, MetadataCatalog
from detzoo.evaluation import SemSegEvaluator

IGNORE = 255


def register(tmp_path, gts, classes, id_map=None):
    """Register a dataset of the given [H, W] uint8 ground-truth maps."""
    records = []
    for i, gt in enumerate(gts):
        path = tmp_path / f"gt_{i}.png"
        Image.fromarray(gt.astype(np.uint8)).save(path)
        records.append({"file_name": f"img_{i}.jpg", "sem_seg_file_name": str(path), "height": gt.shape[0],
                        "width": gt.shape[1]})
    name = f"sem_seg_test_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(stuff_classes=classes, ignore_label=IGNORE)
    if id_map is not None:
        MetadataCatalog.get(name).stuff_dataset_id_to_contiguous_id = id_map
    return name


def one_hot_scores(labels, num_classes):
    return torch.nn.functional.one_hot(torch.from_numpy(labels).long(), num_classes).permute(2, 0, 1).float()


def run(evaluator, preds):
    evaluator.reset()
    for i, pred in enumerate(preds):
        scores = one_hot_scores(pred, len(evaluator._class_names))
        evaluator.process([{"file_name": f"img_{i}.jpg"}], [{"sem_seg": scores}])
    return evaluator.evaluate()["sem_seg"]


def test_hand_computed(tmp_path):
    """gt / pred of 8 pixels, classes a, b, c (c never appears in the ground truth):
        gt   a a a a b b b 255
        pred a a a b b c c a
    a: tp 3, gt 4, pred 3 -> IoU 3/4, ACC 3/4; b: tp 1, gt 3, pred 2 -> IoU 1/4, ACC 1/3;
    c: no ground truth -> NaN. mIoU = (3/4 + 1/4)/2, fwIoU = 4/7 * 3/4 + 3/7 * 1/4,
    mACC = (3/4 + 1/3)/2, pACC = 4/7 (the ignored pixel counts nowhere)."""
    gt = np.array([[0, 0, 0, 0, 1, 1, 1, IGNORE]])
    pred = np.array([[0, 0, 0, 1, 1, 2, 2, 0]])
    name = register(tmp_path, [gt], ["a", "b", "c"])
    res = run(SemSegEvaluator(name, output_dir=str(tmp_path / "out")), [pred])
    assert res["IoU-a"] == pytest.approx(75.0)
    assert res["IoU-b"] == pytest.approx(25.0)
    assert np.isnan(res["IoU-c"]) and np.isnan(res["ACC-c"])
    assert res["mIoU"] == pytest.approx(50.0)
    assert res["fwIoU"] == pytest.approx(100 * (4 / 7 * 3 / 4 + 3 / 7 * 1 / 4))
    assert res["ACC-a"] == pytest.approx(75.0) and res["ACC-b"] == pytest.approx(100 / 3)
    assert res["mACC"] == pytest.approx(100 * (3 / 4 + 1 / 3) / 2)
    assert res["pACC"] == pytest.approx(100 * 4 / 7)
    assert list(res)[:2] == ["mIoU", "fwIoU"]
    written = json.loads((tmp_path / "out" / "sem_seg_predictions.json").read_text())
    assert sorted(r["category_id"] for r in written) == [0, 1, 2]
    assert (tmp_path / "out" / "sem_seg_evaluation.pth").exists()


def brute_force(gts, preds, num_classes):
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)  # [gt, pred]
    for gt, pred in zip(gts, preds):
        for g, p in zip(gt.reshape(-1).tolist(), pred.reshape(-1).tolist()):
            if g != IGNORE:
                conf[g, p] += 1
    iou, acc = {}, {}
    for c in range(num_classes):
        tp, gt_count, pred_count = conf[c, c], conf[c].sum(), conf[:, c].sum()
        if gt_count > 0:
            acc[c] = tp / gt_count
            iou[c] = tp / (gt_count + pred_count - tp)
    total = conf.sum()
    return {
        "mIoU": 100 * np.mean(list(iou.values())),
        "fwIoU": 100 * sum(iou[c] * conf[c].sum() / total for c in iou),
        "mACC": 100 * np.mean(list(acc.values())),
        "pACC": 100 * np.trace(conf) / total,
        **{f"IoU-k{c}": 100 * iou.get(c, np.nan) for c in range(num_classes)},
        **{f"ACC-k{c}": 100 * acc.get(c, np.nan) for c in range(num_classes)},
    }


@pytest.mark.parametrize("distributed", [True, False])
def test_random_against_pixel_counting(tmp_path, distributed):
    rng = np.random.default_rng(0)
    num_classes = 5
    gts = [rng.integers(0, num_classes - 1, (13, 17)) for _ in range(4)]  # class 4 never in the gt
    for gt in gts:
        gt[rng.random(gt.shape) < 0.1] = IGNORE
    preds = [np.where(rng.random(gt.shape) < 0.7, np.where(gt == IGNORE, 0, gt), rng.integers(0, num_classes, gt.shape))
             for gt in gts]
    name = register(tmp_path, gts, [f"k{c}" for c in range(num_classes)])
    res = run(SemSegEvaluator(name, distributed=distributed), preds)
    expected = brute_force(gts, preds, num_classes)
    for key, value in expected.items():
        assert res[key] == pytest.approx(value, nan_ok=True), key


def test_no_prediction_gives_zeros_with_a_warning(tmp_path, caplog):
    name = register(tmp_path, [np.zeros((2, 2))], ["a"])
    logger = __import__("logging").getLogger("detzoo.evaluation.sem_seg_evaluation")
    logger.addHandler(caplog.handler)
    try:
        res = run(SemSegEvaluator(name), [])
    finally:
        logger.removeHandler(caplog.handler)
    assert res["mIoU"] == 0.0 and res["pACC"] == 0.0
    assert "no ground-truth pixel" in caplog.text


def test_bad_inputs(tmp_path):
    name = register(tmp_path, [np.array([[0, 7], [1, IGNORE]])], ["a", "b"])
    evaluator = SemSegEvaluator(name)
    evaluator.reset()
    with pytest.raises(ValueError, match=r"labels \[7\] outside \[0, 1\]"):
        evaluator.process([{"file_name": "img_0.jpg"}], [{"sem_seg": torch.zeros(2, 2, 2)}])
    with pytest.raises(ValueError, match="C = 2 classes"):
        evaluator.process([{"file_name": "img_0.jpg"}], [{"sem_seg": torch.zeros(3, 2, 2)}])
    with pytest.raises(ValueError, match="is 3x2, but its ground truth"):
        evaluator.process([{"file_name": "img_0.jpg"}], [{"sem_seg": torch.zeros(2, 3, 2)}])
    with pytest.raises(KeyError, match="not an image of dataset"):
        evaluator.process([{"file_name": "other.jpg"}], [{"sem_seg": torch.zeros(2, 2, 2)}])
    with pytest.raises(ValueError, match="num_classes=3"):
        SemSegEvaluator(name, num_classes=3)
