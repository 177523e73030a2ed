"""COCOPanopticEvaluator against hand-computed PQ / SQ / RQ, and against a plain dict-and-loop
transcription of the reference rules (panopticapi's pq_compute) on random images."""
import json
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from detzoo.data import MetadataCatalog
from detzoo.evaluation import COCOPanopticEvaluator

# dataset category ids: 1, 2 things, 10, 11 stuff
CATEGORIES = [{"id": 1, "name": "a", "isthing": 1}, {"id": 2, "name": "b", "isthing": 1},
              {"id": 10, "name": "s", "isthing": 0}, {"id": 11, "name": "t", "isthing": 0}]
THING_MAP = {1: 0, 2: 1}
STUFF_MAP = {10: 0, 11: 1}


def to_png(ids, path):
    ids = np.asarray(ids, dtype=np.int64)
    Image.fromarray(np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)).save(path)


def register(tmp_path, images, stuff_map=STUFF_MAP):
    """images: list of (gt id map, gt segments_info). Returns the dataset name."""
    annotations = []
    for image_id, (ids, segments) in enumerate(images):
        to_png(ids, tmp_path / f"{image_id}.png")
        annotations.append({"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": segments})
    data = {"images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(len(images))], "annotations": annotations,
            "categories": CATEGORIES}
    (tmp_path / "panoptic.json").write_text(json.dumps(data))
    name = f"panoptic_test_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(panoptic_json=str(tmp_path / "panoptic.json"), panoptic_root=str(tmp_path),
                                  thing_dataset_id_to_contiguous_id=THING_MAP,
                                  stuff_dataset_id_to_contiguous_id=stuff_map, label_divisor=1000)
    return name


def evaluate(name, predictions, output_dir=None):
    evaluator = COCOPanopticEvaluator(name, output_dir=output_dir)
    evaluator.reset()
    for image_id, (ids, segments) in predictions.items():
        evaluator.process([{"image_id": image_id, "file_name": f"{image_id}.jpg"}],
                          [{"panoptic_seg": (torch.as_tensor(np.asarray(ids), dtype=torch.int32), segments)}])
    return evaluator.evaluate()["panoptic_seg"]


def seg(id, category, area=None, iscrowd=0):
    s = {"id": id, "category_id": category, "iscrowd": iscrowd}
    if area is not None:
        s["area"] = area
    return s


def test_hand_computed_two_matches(tmp_path):
    """gt: thing segment 1 (category 1) on the left 8 pixels, stuff segment 2 (category 10) on
    the right 8. pred 5 (thing class 0 -> 1): 6 of segment 1 + 1 of segment 2 -> IoU 6 / 9;
    pred 6 (stuff class 0 -> 10): the other 9 pixels -> IoU 7 / 10."""
    gt = np.array([[1, 1, 2, 2]] * 4)
    pred = np.array([[5, 5, 6, 6]] * 4)
    pred[3, 0] = pred[3, 1] = 6  # 2 pixels of segment 1 go to pred 6
    pred[0, 2] = 5  # 1 pixel of segment 2 goes to pred 5
    name = register(tmp_path, [(gt, [seg(1, 1, 8), seg(2, 10, 8)])])
    res = evaluate(name, {0: (pred, [{"id": 5, "category_id": 0, "isthing": True},
                                     {"id": 6, "category_id": 0, "isthing": False}])})
    assert res["PQ_th"] == pytest.approx(100 * 6 / 9) and res["SQ_th"] == pytest.approx(100 * 6 / 9)
    assert res["PQ_st"] == pytest.approx(100 * 7 / 10)
    assert res["RQ"] == pytest.approx(100.0)
    assert res["PQ"] == pytest.approx(100 * (6 / 9 + 7 / 10) / 2)


def test_hand_computed_void_crowd_fp_fn(tmp_path):
    """A 10x10 image. gt: segment 1 (category 1) = rows 0-1 (20 px); crowd segment 2 (category 2)
    = rows 2-3; segment 3 (category 2) = rows 4-5; rows 6-9 VOID (id 0).
    pred 11 (category 1) = rows 0-2 (30 px): IoU 20 / 30 -> TP with IoU 2/3.
    pred 13 (category 2) = rows 3 and 7: 10 px on the crowd, 10 on VOID -> ignored (all of it).
    pred 14 (category 2) = row 5 (10 px of segment 3, IoU 10/20 = 0.5, not > 0.5) -> FP,
    and segment 3 is a FN.
    Category 1: TP 1, IoU 2/3 -> PQ 2/3. Category 2: FP 1, FN 1 -> PQ 0, SQ 0, RQ 0.
    Things: PQ (2/3 + 0) / 2; no stuff category is scored -> NaN."""
    gt = np.zeros((10, 10), dtype=np.int64)
    gt[0:2], gt[2:4], gt[4:6] = 1, 2, 3
    pred = np.zeros((10, 10), dtype=np.int64)
    pred[0:3] = 11
    pred[3] = 13
    pred[7] = 13
    pred[5] = 14
    name = register(tmp_path, [(gt, [seg(1, 1, 20), seg(2, 2, 20, iscrowd=1), seg(3, 2)])])
    res = evaluate(name, {0: (pred, [{"id": 11, "category_id": 1}, {"id": 13, "category_id": 2},
                                     {"id": 14, "category_id": 2}])})
    assert res["PQ_th"] == pytest.approx(100 * (2 / 3) / 2)
    assert res["SQ_th"] == pytest.approx(100 * (2 / 3) / 2)
    assert res["RQ_th"] == pytest.approx(100 * (1 + 0) / 2)
    assert np.isnan(res["PQ_st"])
    assert res["PQ"] == pytest.approx(res["PQ_th"])


def test_labels_without_segments_info(tmp_path):
    """category * label_divisor + instance ids, -1 unlabeled: a perfect prediction -> PQ 100.
    As in Detectron2's panoptic models, the classes are numbered over things and stuff together
    (stuff_dataset_id_to_contiguous_id covers all), the things' numbers being theirs too."""
    gt = np.array([[1, 1, 2, 0]])
    name = register(tmp_path, [(gt, [seg(1, 1, 2), seg(2, 11, 1)])], stuff_map={1: 0, 2: 1, 10: 2, 11: 3})
    pred = np.array([[0 * 1000 + 3, 0 * 1000 + 3, 3 * 1000, -1]])  # thing class 0, stuff class 3
    res = evaluate(name, {0: (pred, None)})
    assert res["PQ"] == pytest.approx(100.0)


# ---------------------------------------------------------------- reference transcription
def reference_stats(gt_ids, gt_segments, pred_ids, pred_segments):
    """pq_compute_single_core's rules, one pair at a time."""
    stats = {c["id"]: [0, 0, 0, 0.0] for c in CATEGORIES}  # tp, fp, fn, iou
    gt_segms = {s["id"]: dict(s) for s in gt_segments}
    pred_segms = {s["id"]: dict(s) for s in pred_segments}
    labels, counts = np.unique(pred_ids, return_counts=True)
    for label, count in zip(labels.tolist(), counts.tolist()):
        if label in pred_segms:
            pred_segms[label]["area"] = count
    joint = {}
    for g, p in zip(gt_ids.reshape(-1).tolist(), pred_ids.reshape(-1).tolist()):
        joint[(g, p)] = joint.get((g, p), 0) + 1
    gt_matched, pred_matched = set(), set()
    for (g, p), inter in joint.items():
        if g not in gt_segms or p not in pred_segms or gt_segms[g]["iscrowd"] == 1:
            continue
        if gt_segms[g]["category_id"] != pred_segms[p]["category_id"]:
            continue
        union = pred_segms[p]["area"] + gt_segms[g]["area"] - inter - joint.get((0, p), 0)
        if inter / union > 0.5:
            stats[gt_segms[g]["category_id"]][0] += 1
            stats[gt_segms[g]["category_id"]][3] += inter / union
            gt_matched.add(g)
            pred_matched.add(p)
    crowd = {}
    for g, info in gt_segms.items():
        if g in gt_matched:
            continue
        if info["iscrowd"] == 1:
            crowd[info["category_id"]] = g
            continue
        stats[info["category_id"]][2] += 1
    for p, info in pred_segms.items():
        if p in pred_matched:
            continue
        inter = joint.get((0, p), 0)
        if info["category_id"] in crowd:
            inter += joint.get((crowd[info["category_id"]], p), 0)
        if inter / info["area"] > 0.5:
            continue
        stats[info["category_id"]][1] += 1
    return stats


def reference_pq(total, isthing):
    values = []
    for c in CATEGORIES:
        if isthing is not None and (c["isthing"] == 1) != isthing:
            continue
        tp, fp, fn, iou = total[c["id"]]
        if tp + fp + fn == 0:
            continue
        values.append((iou / (tp + fp / 2 + fn / 2), iou / tp if tp else 0, tp / (tp + fp / 2 + fn / 2)))
    return np.mean(values, axis=0) * 100 if values else [np.nan] * 3


def random_image(rng, size=(12, 14)):
    """A random partition into rectangles-ish segments by coarse noise."""
    coarse = rng.integers(0, 6, (size[0] // 3 + 1, size[1] // 3 + 1))
    ids = np.kron(coarse, np.ones((3, 3), dtype=np.int64))[: size[0], : size[1]]
    ids = np.where(rng.random(size) < 0.1, rng.integers(0, 6, size), ids)
    return ids


def test_random_against_reference_rules(tmp_path):
    rng = np.random.default_rng(0)
    images, predictions, total = [], {}, {c["id"]: [0, 0, 0, 0.0] for c in CATEGORIES}
    for image_id in range(6):
        gt_ids = random_image(rng)
        gt_segments = [seg(i, int(rng.choice([1, 2, 10, 11])), int((gt_ids == i).sum()), int(rng.random() < 0.15))
                       for i in np.unique(gt_ids).tolist() if i != 0]
        pred_ids = np.where(rng.random(gt_ids.shape) < 0.8, gt_ids + 20, random_image(rng) + 20)
        pred_ids[rng.random(gt_ids.shape) < 0.05] = 0
        pred_segments = [{"id": i, "category_id": int(rng.choice([1, 2, 10, 11]))}
                         for i in np.unique(pred_ids).tolist() if i != 0]
        for s in pred_segments:  # mostly the category of the gt segment it came from
            source = [g for g in gt_segments if g["id"] == s["id"] - 20]
            if source and rng.random() < 0.8:
                s["category_id"] = source[0]["category_id"]
        images.append((gt_ids, gt_segments))
        predictions[image_id] = (pred_ids, pred_segments)
        for c, v in reference_stats(gt_ids, gt_segments, pred_ids, pred_segments).items():
            total[c] = [a + b for a, b in zip(total[c], v)]
    name = register(tmp_path, images)
    res = evaluate(name, predictions, output_dir=str(tmp_path / "out"))
    for isthing, suffix in ((None, ""), (True, "_th"), (False, "_st")):
        expected = reference_pq(total, isthing)
        assert [res["PQ" + suffix], res["SQ" + suffix], res["RQ" + suffix]] == pytest.approx(expected)
    assert 0 < res["PQ"] < 100
    written = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert len(written["annotations"]) == 6


def test_empty_and_bad_predictions(tmp_path):
    gt = np.array([[1, 1, 2, 0]])
    name = register(tmp_path, [(gt, [seg(1, 1, 2), seg(2, 11, 1)])])
    res = evaluate(name, {})
    assert res["PQ"] == 0.0 and res["RQ_th"] == 0.0  # every ground-truth segment is a false negative
    with pytest.raises(ValueError, match=r"segment ids \[7\] are in the predicted map but not in segments_info"):
        evaluate(name, {0: (np.array([[7, 7, 7, 7]]), [])})
    with pytest.raises(ValueError, match=r"segments \[8\] of segments_info have no pixel"):
        evaluate(name, {0: (np.zeros((1, 4)), [{"id": 8, "category_id": 1}])})
    with pytest.raises(ValueError, match=r"category ids \[99\]"):
        evaluate(name, {0: (np.ones((1, 4)), [{"id": 1, "category_id": 99}])})
    with pytest.raises(ValueError, match="is 1x3"):
        evaluate(name, {0: (np.ones((1, 3)), [{"id": 1, "category_id": 1}])})
    # an image that is not in the ground truth is ignored (with a warning)
    res = evaluate(name, {5: (np.ones((1, 4)), [{"id": 1, "category_id": 1}])})
    assert res["PQ"] == 0.0
