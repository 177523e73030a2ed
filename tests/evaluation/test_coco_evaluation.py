"""COCOEvaluator against pycocotools' COCOeval run directly on the same data.

A small COCO set is fabricated in each test (non-contiguous category ids, a crowd region,
polygon masks, 4 keypoints per person, one image without annotations); predictions are
perturbed ground truth plus false positives. The reference numbers come from pycocotools alone.
"""
import contextlib
import io
import json
import logging
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detzoo.config import get_cfg
from detzoo.data import DatasetCatalog, MetadataCatalog
from detzoo.evaluation import COCOEvaluator, RotatedCOCOEvaluator
from detzoo.evaluation.coco_evaluation import _evaluate_box_proposals, _evaluate_predictions_on_coco, \
    instances_to_coco_json
from detzoo.structures import Boxes, BoxMode, Instances, RotatedBoxes

CATEGORY_IDS = [1, 3, 7]
CLASS_NAMES = ["person", "car", "dog"]
NUM_KEYPOINTS = 4
SIGMAS = [0.05, 0.07, 0.09, 0.11]
HEIGHT, WIDTH = 60, 80


def unique(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def box_polygon(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def make_dataset(rng, num_images=6):
    """COCO-format dict: boxes of several sizes (all three area ranges), polygons, keypoints."""
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": WIDTH, "height": HEIGHT, "file_name": f"{image_id}.jpg"})
        if image_id == num_images:
            continue  # an image without annotations
        for _ in range(int(rng.integers(1, 5))):
            w, h = float(rng.integers(3, 40)), float(rng.integers(3, 40))
            x, y = float(rng.integers(0, WIDTH - w)), float(rng.integers(0, HEIGHT - h))
            category = int(rng.choice(CATEGORY_IDS))
            keypoints = []
            for _ in range(NUM_KEYPOINTS):
                visible = int(rng.integers(0, 3))
                keypoints += [float(rng.uniform(x, x + w)), float(rng.uniform(y, y + h)), visible] if visible \
                    else [0.0, 0.0, 0]
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0, "segmentation": box_polygon(x, y, w, h),
                "keypoints": keypoints, "num_keypoints": sum(1 for v in keypoints[2::3] if v > 0),
            })
    crowd = np.zeros((HEIGHT, WIDTH), dtype=np.uint8, order="F")
    crowd[5:25, 40:70] = 1
    rle = mask_util.encode(crowd)
    rle["counts"] = rle["counts"].decode("ascii")
    annotations.append({"id": len(annotations) + 1, "image_id": 1, "category_id": 3, "bbox": [40.0, 5.0, 30.0, 20.0],
                        "area": 600.0, "iscrowd": 1, "segmentation": rle, "keypoints": [0.0] * 3 * NUM_KEYPOINTS,
                        "num_keypoints": 0})
    categories = [{"id": c, "name": n, "keypoints": [f"k{i}" for i in range(NUM_KEYPOINTS)]}
                  for c, n in zip(CATEGORY_IDS, CLASS_NAMES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def make_predictions(rng, dataset, with_masks=True, with_keypoints=True):
    """(inputs, outputs) batches of one image each: jittered ground truth, plus false positives."""
    by_image = {img["id"]: [] for img in dataset["images"]}
    for ann in dataset["annotations"]:
        if not ann["iscrowd"]:
            by_image[ann["image_id"]].append(ann)
    contiguous = {c: i for i, c in enumerate(CATEGORY_IDS)}
    batches = []
    for image_id, anns in by_image.items():
        boxes, classes = [], []
        for ann in anns:
            x, y, w, h = ann["bbox"]
            if rng.random() < 0.85:
                jitter = rng.uniform(-3, 3, 4)
                boxes.append([x + jitter[0], y + jitter[1], x + w + jitter[2], y + h + jitter[3]])
                classes.append(contiguous[ann["category_id"]] if rng.random() < 0.9 else int(rng.integers(0, 3)))
        for _ in range(int(rng.integers(0, 4))):
            x0, y0 = rng.uniform(0, WIDTH - 10), rng.uniform(0, HEIGHT - 10)
            boxes.append([x0, y0, x0 + rng.uniform(2, 30), y0 + rng.uniform(2, 30)])
            classes.append(int(rng.integers(0, 3)))
        boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4).clamp(min=0)
        boxes[:, 2].clamp_(max=WIDTH)
        boxes[:, 3].clamp_(max=HEIGHT)
        n = len(boxes)
        instances = Instances((HEIGHT, WIDTH))
        instances.pred_boxes = Boxes(boxes)
        # Rounded scores make ties, which both implementations must break the same way.
        instances.scores = torch.tensor(rng.uniform(0.05, 1, n).round(1), dtype=torch.float32)
        instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
        if with_masks:
            masks = torch.zeros((n, HEIGHT, WIDTH), dtype=torch.bool)
            for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
                masks[i, y0:y1, x0:x1] = True
            instances.pred_masks = masks
        if with_keypoints:
            kps = torch.zeros((n, NUM_KEYPOINTS, 3))
            kps[:, :, 0] = boxes[:, :1] + torch.rand(n, NUM_KEYPOINTS) * (boxes[:, 2:3] - boxes[:, :1])
            kps[:, :, 1] = boxes[:, 1:2] + torch.rand(n, NUM_KEYPOINTS) * (boxes[:, 3:4] - boxes[:, 1:2])
            kps[:, :, 2] = torch.rand(n, NUM_KEYPOINTS)
            instances.pred_keypoints = kps
        batches.append(([{"image_id": image_id, "height": HEIGHT, "width": WIDTH}], [{"instances": instances}]))
    return batches


@pytest.fixture
def coco_dataset(tmp_path):
    """(dataset name, json path, dataset dict) of a registered COCO-format dataset."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    dataset = make_dataset(rng)
    json_file = tmp_path / "instances.json"
    json_file.write_text(json.dumps(dataset))
    name = unique("coco_eval_test")
    MetadataCatalog.get(name).set(json_file=str(json_file), thing_classes=CLASS_NAMES,
                                  thing_dataset_id_to_contiguous_id={c: i for i, c in enumerate(CATEGORY_IDS)})
    return name, str(json_file), dataset, make_predictions(rng, dataset)


def run_evaluator(evaluator, batches):
    evaluator.reset()
    for inputs, outputs in batches:
        evaluator.process(inputs, outputs)
    return evaluator.evaluate()


def quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def reference_results(json_file, batches, iou_type, sigmas=None, max_dets=None):
    """pycocotools alone, from the raw model outputs."""
    coco_gt = quiet(COCO, json_file)
    results = []
    for inputs, outputs in batches:
        inst = outputs[0]["instances"]
        for k in range(len(inst)):
            x0, y0, x1, y1 = inst.pred_boxes.tensor[k].tolist()
            r = {"image_id": inputs[0]["image_id"], "category_id": CATEGORY_IDS[int(inst.pred_classes[k])],
                 "score": float(inst.scores[k])}
            if iou_type != "segm":
                r["bbox"] = [x0, y0, x1 - x0, y1 - y0]
            if iou_type == "segm":
                rle = mask_util.encode(np.asfortranarray(inst.pred_masks[k].numpy().astype(np.uint8)))
                r["segmentation"] = rle
            if iou_type == "keypoints":
                kp = inst.pred_keypoints[k].clone().double()
                kp[:, :2] -= 0.5
                r["keypoints"] = kp.flatten().tolist()
            results.append(r)
    coco_dt = quiet(coco_gt.loadRes, results)
    coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
    if sigmas is not None:
        coco_eval.params.kpt_oks_sigmas = np.array(sigmas)
    if max_dets is not None:
        coco_eval.params.maxDets = max_dets
    quiet(coco_eval.evaluate)
    quiet(coco_eval.accumulate)
    if max_dets is None:
        quiet(coco_eval.summarize)
    return coco_eval


def as_percent(stats):
    return [float(s * 100) if s >= 0 else float("nan") for s in stats]


@pytest.mark.parametrize("use_fast_impl", [True, False])
def test_bbox_segm_match_pycocotools(coco_dataset, tmp_path, use_fast_impl):
    name, json_file, _, batches = coco_dataset
    for _, outputs in batches:
        outputs[0]["instances"].remove("pred_keypoints")
    evaluator = COCOEvaluator(name, output_dir=str(tmp_path / "out"), use_fast_impl=use_fast_impl)
    results = run_evaluator(evaluator, batches)
    assert sorted(results) == ["bbox", "segm"]
    for task in ("bbox", "segm"):
        ref = reference_results(json_file, batches, task)
        metrics = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
        np.testing.assert_allclose([results[task][m] for m in metrics], as_percent(ref.stats[:6]), atol=1e-9)
        # per-category AP: all areas, maxDets 100
        for k, class_name in enumerate(CLASS_NAMES):
            precision = ref.eval["precision"][:, :, k, 0, -1]
            expected = np.mean(precision[precision > -1]) * 100
            assert results[task][f"AP-{class_name}"] == pytest.approx(expected, abs=1e-9)
    assert 0 < results["bbox"]["AP"] < 100
    written = json.loads((tmp_path / "out" / "coco_instances_results.json").read_text())
    assert len(written) == sum(len(o[0]["instances"]) for _, o in batches)
    assert {r["category_id"] for r in written} <= set(CATEGORY_IDS)
    assert (tmp_path / "out" / "instances_predictions.pth").exists()


def test_keypoints_sigmas_from_argument_cfg_and_metadata(coco_dataset):
    name, json_file, _, batches = coco_dataset
    ref = reference_results(json_file, batches, "keypoints", sigmas=SIGMAS)
    expected = as_percent(ref.stats[:5])
    metrics = ["AP", "AP50", "AP75", "APm", "APl"]

    explicit = run_evaluator(COCOEvaluator(name, tasks=("keypoints",), kpt_oks_sigmas=SIGMAS), batches)
    np.testing.assert_allclose([explicit["keypoints"][m] for m in metrics], expected, atol=1e-9)

    cfg = get_cfg()
    cfg.TEST.KEYPOINT_OKS_SIGMAS = SIGMAS
    from_cfg = run_evaluator(COCOEvaluator(name, cfg, distributed=False), batches)
    assert sorted(from_cfg) == ["bbox", "keypoints", "segm"]
    np.testing.assert_allclose([from_cfg["keypoints"][m] for m in metrics], expected, atol=1e-9)

    MetadataCatalog.get(name).keypoint_oks_sigmas = SIGMAS
    from_metadata = run_evaluator(COCOEvaluator(name, tasks=("keypoints",)), batches)
    np.testing.assert_allclose([from_metadata["keypoints"][m] for m in metrics], expected, atol=1e-9)


def test_keypoint_count_mismatch_is_a_clear_error(coco_dataset):
    name, _, _, batches = coco_dataset
    with pytest.raises(ValueError, match="4 keypoints.*17 OKS sigmas"):
        run_evaluator(COCOEvaluator(name, tasks=("keypoints",)), batches)


@pytest.mark.parametrize("use_fast_impl", [True, False])
def test_max_dets_per_image(coco_dataset, use_fast_impl):
    name, json_file, _, batches = coco_dataset
    results = run_evaluator(COCOEvaluator(name, tasks=("bbox",), max_dets_per_image=2, use_fast_impl=use_fast_impl),
                            batches)
    ref = reference_results(json_file, batches, "bbox", max_dets=[1, 10, 2])
    precision = ref.eval["precision"]  # [T, R, K, A, M]
    mind = [1, 10, 2].index(2)
    all_areas = precision[:, :, :, 0, mind]
    expected_ap = np.mean(all_areas[all_areas > -1]) * 100
    assert results["bbox"]["AP"] == pytest.approx(expected_ap, abs=1e-9)
    ap50 = precision[0, :, :, 0, mind]
    assert results["bbox"]["AP50"] == pytest.approx(np.mean(ap50[ap50 > -1]) * 100, abs=1e-9)
    # fewer detections per image than with COCO's 100 (the sets hold up to 7 per image)
    full = run_evaluator(COCOEvaluator(name, tasks=("bbox",)), batches)
    assert results["bbox"]["AP"] <= full["bbox"]["AP"]


def test_dataset_without_json_is_converted_and_cached(tmp_path, caplog):
    name = unique("d2_format_eval_test")
    records = []
    for image_id in range(3):
        annotations = [{"bbox": [10.0 * image_id, 5.0, 20.0, 30.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0},
                       {"bbox": [40.0, 20.0, 70.0, 50.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1}]
        records.append({"file_name": f"{image_id}.jpg", "image_id": image_id, "height": HEIGHT, "width": WIDTH,
                        "annotations": annotations})
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).thing_classes = ["a", "b"]
    perfect = []
    for record in records:
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in record["annotations"]]
        inst = Instances((HEIGHT, WIDTH), pred_boxes=Boxes(torch.tensor(boxes)), scores=torch.tensor([0.9, 0.8]),
                         pred_classes=torch.tensor([0, 1]))
        perfect.append(([{"image_id": record["image_id"]}], [{"instances": inst}]))
    out = tmp_path / "out"
    results = run_evaluator(COCOEvaluator(name, output_dir=str(out)), perfect)
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["bbox"]["AP-a"] == pytest.approx(100.0)
    cache = out / f"{name}_coco_format.json"
    assert cache.exists()
    assert MetadataCatalog.get(name).json_file == str(cache)
    assert len(json.loads(cache.read_text())["annotations"]) == 6


def test_dataset_without_json_needs_output_dir():
    name = unique("d2_format_no_output")
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).thing_classes = ["a"]
    with pytest.raises(ValueError, match="output_dir"):
        COCOEvaluator(name)


def collect_warnings(caplog):
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


@pytest.fixture
def caplog_coco(caplog):
    logger = logging.getLogger("detzoo.evaluation.coco_evaluation")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="detzoo.evaluation.coco_evaluation")
    yield caplog
    logger.removeHandler(caplog.handler)


def test_empty_predictions_give_zeros_with_a_warning(coco_dataset, caplog_coco):
    name, _, _, _ = coco_dataset
    evaluator = COCOEvaluator(name, tasks=("bbox", "segm"))
    results = run_evaluator(evaluator, [])
    assert results["bbox"]["AP"] == 0.0 and results["segm"]["AP50"] == 0.0
    assert "no predictions" in collect_warnings(caplog_coco)

    empty = Instances((HEIGHT, WIDTH), pred_boxes=Boxes(torch.zeros(0, 4)), scores=torch.zeros(0),
                      pred_classes=torch.zeros(0, dtype=torch.int64))
    results = run_evaluator(COCOEvaluator(name), [([{"image_id": 1}], [{"instances": empty}])])
    assert results["bbox"]["AP"] == 0.0 and results["bbox"]["AP-car"] == 0.0


def test_bad_predictions_are_dropped_with_warnings(coco_dataset, caplog_coco):
    name, json_file, _, batches = coco_dataset
    for _, outputs in batches:
        outputs[0]["instances"].remove("pred_keypoints")
        outputs[0]["instances"].remove("pred_masks")
    clean = run_evaluator(COCOEvaluator(name), batches)

    def bad(box, image_id=1):
        inst = Instances((HEIGHT, WIDTH), pred_boxes=Boxes(torch.tensor([box])), scores=torch.tensor([0.99]),
                         pred_classes=torch.tensor([0]))
        return [{"image_id": image_id}], [{"instances": inst}]

    noisy = batches + [bad([1.0, 2.0, 3.0, 4.0], image_id=999), bad([float("nan"), 0, 5, 5]), bad([30.0, 30, 10, 10])]
    results = run_evaluator(COCOEvaluator(name), noisy)
    assert results["bbox"] == pytest.approx(clean["bbox"], nan_ok=True)
    warnings = collect_warnings(caplog_coco)
    assert "not in the ground truth" in warnings and "999" in warnings
    assert "NaN or infinite" in warnings
    assert "negative width or height" in warnings


def test_unknown_category_is_an_error(coco_dataset):
    name, _, _, _ = coco_dataset
    inst = Instances((HEIGHT, WIDTH), pred_boxes=Boxes(torch.tensor([[0.0, 0, 5, 5]])), scores=torch.tensor([0.5]),
                     pred_classes=torch.tensor([3]))
    with pytest.raises(ValueError, match="class 3.*3 classes"):
        run_evaluator(COCOEvaluator(name), [([{"image_id": 1}], [{"instances": inst}])])


def test_invalid_json_files(tmp_path, coco_dataset):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    name = unique("bad_json")
    MetadataCatalog.get(name).set(json_file=str(bad), thing_classes=["a"])
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        COCOEvaluator(name)
    _, json_file, _, _ = coco_dataset
    coco_gt = quiet(COCO, json_file)
    with pytest.raises(ValueError, match="results file .*bad.json is not valid JSON"):
        _evaluate_predictions_on_coco(coco_gt, str(bad), "bbox")


def test_results_file_path(coco_dataset, tmp_path):
    _, json_file, _, batches = coco_dataset
    results = []
    for inputs, outputs in batches:
        for r in instances_to_coco_json(outputs[0]["instances"], inputs[0]["image_id"]):
            r["category_id"] = CATEGORY_IDS[r["category_id"]]
            results.append(r)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    coco_gt = quiet(COCO, json_file)
    from_file = quiet(_evaluate_predictions_on_coco, coco_gt, str(path), "bbox")
    ref = reference_results(json_file, batches, "bbox")
    np.testing.assert_allclose(from_file.stats, ref.stats)


def test_instances_to_coco_json():
    masks = torch.zeros((2, 6, 7), dtype=torch.bool)
    masks[0, 1:3, 2:6] = True
    masks[1, 4:, :2] = True
    keypoints = torch.tensor([[[1.0, 2.0, 0.5]], [[3.0, 4.0, 0.25]]])
    inst = Instances((6, 7), pred_boxes=Boxes(torch.tensor([[1.0, 2.0, 4.0, 6.0], [0.0, 0.0, 1.0, 1.0]])),
                     scores=torch.tensor([0.5, 0.25]), pred_classes=torch.tensor([2, 0]),
                     pred_masks=masks, pred_keypoints=keypoints)
    results = instances_to_coco_json(inst, 42)
    assert [r["bbox"] for r in results] == [[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0]]
    assert [r["category_id"] for r in results] == [2, 0]
    assert [r["image_id"] for r in results] == [42, 42]
    assert results[0]["keypoints"] == [0.5, 1.5, 0.5]
    assert keypoints[0, 0, 0] == 1.0  # not modified in place
    for k, r in enumerate(results):
        assert isinstance(r["segmentation"]["counts"], str)
        decoded = mask_util.decode({"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()})
        np.testing.assert_array_equal(decoded, masks[k].numpy())
    json.dumps(results)
    empty = Instances((6, 7), pred_boxes=Boxes(torch.zeros(0, 4)), scores=torch.zeros(0),
                      pred_classes=torch.zeros(0, dtype=torch.int64))
    assert instances_to_coco_json(empty, 1) == []


def test_box_proposals_hand_computed(coco_dataset):
    """One image, two ground-truth boxes; proposal 1 covers box A exactly, proposal 2 covers box B
    at IoU 0.72: recall is 1 at thresholds .50-.70 and 0.5 above, so AR = (5 * 1 + 5 * 0.5) / 10."""
    gt = {7: (torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 10.0, 10.0]]), torch.tensor([100.0, 100.0]))}
    proposals = Instances((50, 50))
    # box B = [20, 30] x [20, 30]; [20, 30] x [20, 27.2] has IoU 72 / 100
    proposals.proposal_boxes = Boxes(torch.tensor([[20.0, 20.0, 30.0, 27.2], [0.0, 0.0, 10.0, 10.0],
                                                   [40.0, 40.0, 45.0, 45.0]]))
    proposals.objectness_logits = torch.tensor([0.5, 2.0, 1.0])
    stats = _evaluate_box_proposals([{"image_id": 7, "proposals": proposals}], gt.__getitem__)
    np.testing.assert_allclose(stats["recalls"].numpy(), [1.0] * 5 + [0.5] * 5, atol=1e-6)
    assert stats["ar"].item() == pytest.approx(0.75)
    assert stats["num_pos"] == 2
    # With only the best-scored proposal, box B is not covered.
    limited = _evaluate_box_proposals([{"image_id": 7, "proposals": proposals}], gt.__getitem__, limit=1)
    assert limited["ar"].item() == pytest.approx(0.5)


def test_proposals_through_the_evaluator(coco_dataset, tmp_path):
    name, _, dataset, _ = coco_dataset
    batches = []
    for image in dataset["images"]:
        anns = [a for a in dataset["annotations"] if a["image_id"] == image["id"] and not a["iscrowd"]]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        proposals = Instances((HEIGHT, WIDTH), proposal_boxes=Boxes(BoxMode.convert(boxes, BoxMode.XYWH_ABS,
                                                                                    BoxMode.XYXY_ABS)),
                              objectness_logits=torch.arange(len(anns), dtype=torch.float32))
        batches.append(([{"image_id": image["id"]}], [{"proposals": proposals}]))
    results = run_evaluator(COCOEvaluator(name, output_dir=str(tmp_path)), batches)
    assert results["box_proposals"]["AR@100"] == pytest.approx(100.0)
    assert results["box_proposals"]["AR@1000"] == pytest.approx(100.0)
    assert (tmp_path / "box_proposals.pkl").exists()


def test_bad_arguments(coco_dataset):
    name, _, _, _ = coco_dataset
    with pytest.raises(ValueError, match="unknown tasks"):
        COCOEvaluator(name, tasks=("boxes",))
    with pytest.raises(ValueError, match="max_dets_per_image"):
        COCOEvaluator(name, max_dets_per_image=0)
    inst = Instances((HEIGHT, WIDTH), pred_boxes=Boxes(torch.tensor([[0.0, 0, 5, 5]])), scores=torch.tensor([0.5]),
                     pred_classes=torch.tensor([0]))
    with pytest.raises(ValueError, match="segm evaluation needs a 'segmentation'.*did the model predict masks"):
        run_evaluator(COCOEvaluator(name, tasks=("segm",)), [([{"image_id": 1}], [{"instances": inst}])])


def test_rotated_evaluator(coco_dataset, tmp_path):
    """Angle-0 rotated predictions score as the axis-aligned ones; on rotated ground truth, the
    same boxes turned by 90 degrees with width and height swapped are perfect."""
    _, _, dataset, batches = coco_dataset
    for _, outputs in batches:
        outputs[0]["instances"].remove("pred_keypoints")
        outputs[0]["instances"].remove("pred_masks")
    # rotated IoU has no crowd rule (as in Detectron2): the same set without its crowd region
    dataset = dict(dataset, annotations=[a for a in dataset["annotations"] if not a["iscrowd"]])
    (tmp_path / "no_crowd.json").write_text(json.dumps(dataset))
    name = unique("rotated_no_crowd")
    MetadataCatalog.get(name).set(json_file=str(tmp_path / "no_crowd.json"), thing_classes=CLASS_NAMES,
                                  thing_dataset_id_to_contiguous_id={c: i for i, c in enumerate(CATEGORY_IDS)})
    axis_aligned = run_evaluator(COCOEvaluator(name, use_fast_impl=False), batches)["bbox"]
    rotated_batches = []
    for inputs, outputs in batches:
        inst = outputs[0]["instances"]
        boxes = BoxMode.convert(inst.pred_boxes.tensor, BoxMode.XYXY_ABS, BoxMode.XYWHA_ABS)
        rotated = Instances(inst.image_size, pred_boxes=RotatedBoxes(boxes), scores=inst.scores,
                            pred_classes=inst.pred_classes)
        rotated_batches.append((inputs, [{"instances": rotated}]))
    results = run_evaluator(RotatedCOCOEvaluator(name), rotated_batches)["bbox"]
    assert results == pytest.approx(axis_aligned, abs=1e-6, nan_ok=True)

    gt = {"images": [{"id": 1, "width": 100, "height": 100}],
          "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [50.0, 50.0, 40.0, 10.0, 30.0],
                           "area": 400.0, "iscrowd": 0}]}
    (tmp_path / "rotated.json").write_text(json.dumps(gt))
    rotated_name = unique("rotated_eval_test")
    MetadataCatalog.get(rotated_name).set(json_file=str(tmp_path / "rotated.json"), thing_classes=["a"],
                                          thing_dataset_id_to_contiguous_id={1: 0})
    inst = Instances((100, 100), pred_boxes=RotatedBoxes(torch.tensor([[50.0, 50.0, 10.0, 40.0, 120.0]])),
                     scores=torch.tensor([0.9]), pred_classes=torch.tensor([0]))
    results = run_evaluator(RotatedCOCOEvaluator(rotated_name), [([{"image_id": 1}], [{"instances": inst}])])
    assert results["bbox"]["AP"] == pytest.approx(100.0)
