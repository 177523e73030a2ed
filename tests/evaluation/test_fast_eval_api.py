"""COCOeval_opt against pycocotools' COCOeval on generated datasets.

The reference is pycocotools itself, run on a deep copy of the same COCO objects (its
`evaluate()` rewrites the annotations: polygons become RLEs, `ignore` is overwritten). The
datasets cover crowd regions, images without ground truth or without detections, more
detections than maxDets, tied scores, boxes whose IoU sits exactly on a threshold, all three
area ranges, polygons (several parts), RLEs with string / bytes / list counts, and keypoints with
unlabelled points and annotations with none.
"""
import contextlib
import copy
import io

import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detzoo import _cocoeval
from detzoo.evaluation import COCOeval_opt

NUM_KEYPOINTS = 17


def quiet(fn, *args):
    """Call fn without pycocotools' prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def make_coco(dataset):
    coco = COCO()
    coco.dataset = dataset
    quiet(coco.createIndex)
    return coco


def clone(coco):
    return make_coco(copy.deepcopy(coco.dataset))


def blob(rng, box):
    """A star-shaped polygon [x0, y0, ...] inside an XYWH box, coordinates rounded to 0-2 decimals."""
    x, y, w, h = box
    n = int(rng.integers(3, 12))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radius = rng.uniform(0.5, 1.0, n)
    xs = x + w / 2 + np.cos(angles) * radius * w / 2
    ys = y + h / 2 + np.sin(angles) * radius * h / 2
    return np.stack([xs, ys], 1).reshape(-1).round(int(rng.integers(0, 3))).tolist()


def uncompressed_rle(mask):
    """{"size", "counts": [run lengths]} of a HxW 0/1 array, column-major as COCO stores it."""
    flat = mask.T.reshape(-1)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": counts}


def random_box(rng, width, height, integer):
    w = 2 + (width - 2) * rng.random() ** 2
    h = 2 + (height - 2) * rng.random() ** 2
    box = [rng.uniform(-4, width - w + 4), rng.uniform(-4, height - h + 4), w, h]
    return [float(round(v)) if integer else float(v) for v in box]


def ground_truth_segmentation(rng, box, height, width, crowd):
    """Polygons (1-2 parts), or an RLE with str / bytes counts; crowd regions get list counts."""
    polygons = [blob(rng, box) for _ in range(int(rng.integers(1, 3)))]
    rle = mask_util.merge(mask_util.frPyObjects(polygons, height, width))
    form = rng.random()
    if crowd:
        segmentation = uncompressed_rle(mask_util.decode(rle))
    elif form < 0.65:
        segmentation = polygons
    elif form < 0.85:
        segmentation = {"size": rle["size"], "counts": rle["counts"].decode()}
    else:
        segmentation = rle
    return segmentation, float(mask_util.area(rle))


def ground_truth_keypoints(rng, box):
    x, y, w, h = box
    visibility = rng.choice([0, 1, 2], NUM_KEYPOINTS, p=[0.35, 0.3, 0.35])
    if rng.random() < 0.15:
        visibility[:] = 0
    xs = np.where(visibility > 0, rng.uniform(x, x + w, NUM_KEYPOINTS).round(1), 0)
    ys = np.where(visibility > 0, rng.uniform(y, y + h, NUM_KEYPOINTS).round(1), 0)
    return np.stack([xs, ys, visibility], 1).reshape(-1).tolist(), int((visibility > 0).sum())


def make_ground_truth(seed, num_images=240, num_categories=12, keypoints=False):
    """Images of 64..480 px with 0-10 objects; category ids are even numbers (not 1..K) and
    image ids are spaced, so that positions and ids differ."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for n in range(num_images):
        width, height = int(rng.integers(64, 481)), int(rng.integers(64, 481))
        image_id = 3 * n + 7
        images.append({"id": image_id, "width": width, "height": height})
        num_objects = 0 if rng.random() < 0.1 else int(rng.integers(1, 11))
        for _ in range(num_objects):
            box = random_box(rng, width, height, integer=rng.random() < 0.5)
            crowd = int(rng.random() < 0.08)
            segmentation, mask_area = ground_truth_segmentation(rng, box, height, width, crowd)
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": 2 * int(rng.integers(1, num_categories + 1)),
                "bbox": box,
                "iscrowd": crowd,
                "segmentation": segmentation,
                "area": mask_area if rng.random() < 0.8 else box[2] * box[3],
            }
            if keypoints:
                ann["keypoints"], ann["num_keypoints"] = ground_truth_keypoints(rng, box)
            annotations.append(ann)
    categories = [{"id": 2 * c, "name": f"class{c}"} for c in range(1, num_categories + 1)]
    return make_coco({"images": images, "annotations": annotations, "categories": categories})


def detection_near(rng, gt_ann, categories):
    """A detection jittered around a ground-truth object; better ones score higher."""
    x, y, w, h = gt_ann["bbox"]
    jitter = rng.normal(0, 0.2, 4) * rng.random()
    box = [x + jitter[0] * w, y + jitter[1] * h, max(1.0, w * (1 + jitter[2])), max(1.0, h * (1 + jitter[3]))]
    quality = 1 - np.abs(jitter).sum()
    category = gt_ann["category_id"] if rng.random() < 0.85 else int(rng.choice(categories))
    return box, category, quality


def detection_keypoints(rng, gt_ann, box):
    x, y, w, h = box
    if gt_ann is None or "keypoints" not in gt_ann:
        xs, ys = rng.uniform(x, x + w, NUM_KEYPOINTS), rng.uniform(y, y + h, NUM_KEYPOINTS)
    else:
        points = np.asarray(gt_ann["keypoints"], dtype=float).reshape(NUM_KEYPOINTS, 3)
        spread = 0.08 * np.sqrt(max(gt_ann["area"], 1.0)) * rng.random()
        xs = points[:, 0] + rng.normal(0, spread, NUM_KEYPOINTS)
        ys = points[:, 1] + rng.normal(0, spread, NUM_KEYPOINTS)
    return np.stack([xs, ys, np.ones(NUM_KEYPOINTS)], 1).reshape(-1).tolist()


def make_results(seed, gt, iou_type):
    """Result dicts as a model writes them: ~8 % of images without any, ~10 % with 100-140
    (beyond maxDets), scores rounded to 1-2 decimals so that ties are frequent."""
    rng = np.random.default_rng(seed)
    categories = gt.getCatIds()
    results = []
    for image in gt.dataset["images"]:
        if rng.random() < 0.08:
            continue
        width, height = image["width"], image["height"]
        objects = gt.imgToAnns[image["id"]]
        num = int(rng.integers(100, 141)) if rng.random() < 0.1 else int(rng.integers(0, 25))
        for _ in range(num):
            gt_ann = objects[int(rng.integers(len(objects)))] if objects and rng.random() < 0.7 else None
            if gt_ann is not None:
                box, category, quality = detection_near(rng, gt_ann, categories)
            else:
                box = random_box(rng, width, height, integer=False)
                category, quality = int(rng.choice(categories)), rng.random() * 0.6
            if rng.random() < 0.3:
                box = [float(round(v)) for v in box]
            score = float(np.clip(quality + rng.normal(0, 0.1), 0, 1).round(int(rng.integers(1, 3))))
            result = {"image_id": image["id"], "category_id": category, "score": score}
            if iou_type == "bbox":
                result["bbox"] = box
            elif iou_type == "segm":
                rle = mask_util.merge(mask_util.frPyObjects([blob(rng, box)], height, width))
                result["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
            else:
                result["keypoints"] = detection_keypoints(rng, gt_ann, box)
            results.append(result)
    return quiet(gt.loadRes, results)


@pytest.fixture(scope="module")
def datasets():
    """(ground truth, detections) per IoU type, built once for the module."""
    out = {}
    for seed, iou_type in enumerate(["bbox", "segm", "keypoints"]):
        gt = make_ground_truth(seed, keypoints=iou_type == "keypoints")
        out[iou_type] = gt, make_results(seed + 100, gt, iou_type)
    return out


def run_both(gt, dt, iou_type, configure=lambda params: None, accumulate_params=None):
    """Evaluate with COCOeval_opt and with pycocotools (on copies); returns both evaluators."""
    evaluators = []
    for cls, gt_coco, dt_coco in [(COCOeval_opt, gt, dt), (COCOeval, clone(gt), clone(dt))]:
        evaluator = cls(gt_coco, dt_coco, iou_type)
        configure(evaluator.params)
        quiet(evaluator.evaluate)
        p = None if accumulate_params is None else accumulate_params(copy.deepcopy(evaluator.params))
        quiet(evaluator.accumulate, p)
        evaluators.append(evaluator)
    return evaluators


def assert_same_results(ours, ref, summarize=True):
    for key in ["precision", "recall", "scores"]:
        assert ours.eval[key].shape == ref.eval[key].shape, key
        np.testing.assert_allclose(ours.eval[key], ref.eval[key], rtol=0, atol=1e-9, err_msg=key)
    assert ours.eval["counts"] == ref.eval["counts"]
    if summarize:
        quiet(ours.summarize)
        quiet(ref.summarize)
        np.testing.assert_allclose(ours.stats, ref.stats, rtol=0, atol=1e-4)


@pytest.mark.parametrize("iou_type", ["bbox", "segm", "keypoints"])
def test_matches_pycocotools(datasets, iou_type):
    ours, ref = run_both(*datasets[iou_type], iou_type)
    assert_same_results(ours, ref)
    # the data set exercises every area range: no summary metric left at -1
    assert (ref.stats > 0).all(), ref.stats


@pytest.mark.parametrize("iou_type", ["bbox", "segm", "keypoints"])
def test_without_categories(datasets, iou_type):
    def configure(p):
        p.useCats = 0

    assert_same_results(*run_both(*datasets[iou_type], iou_type, configure))


def test_custom_max_dets_area_ranges_and_subsets(datasets):
    gt, dt = datasets["bbox"]
    image_ids = sorted(gt.getImgIds())

    def configure(p):
        p.maxDets = [20, 1, 5]  # sorted by evaluate()
        p.areaRng = [[0, 1e10], [0, 40**2], [40**2, 120**2], [120**2, 1e10]]
        p.imgIds = image_ids[::3] + [10**6]  # a subset, and an id that has no image
        p.catIds = gt.getCatIds()[1::2]

    assert_same_results(*run_both(gt, dt, "bbox", configure))


def test_accumulate_with_other_params(datasets):
    """accumulate(p) reads the entries of p that were evaluated, as pycocotools does."""
    gt, dt = datasets["bbox"]

    def narrower(p):
        p.maxDets = [1, 100]
        p.areaRng = p.areaRng[:2]
        p.areaRngLbl = p.areaRngLbl[:2]
        return p

    assert_same_results(*run_both(gt, dt, "bbox", accumulate_params=narrower), summarize=False)


def test_segm_of_box_results(datasets):
    """Box-only results evaluated as masks: loadRes turns each box into a polygon."""
    gt, _ = datasets["segm"]
    boxes_only = make_results(7, gt, "bbox")
    assert_same_results(*run_both(gt, boxes_only, "segm"))


def test_ties_on_iou_thresholds():
    """Integer boxes whose IoU with their object is exactly 0.5, 0.75 or 0.95, tied scores."""
    images = [{"id": i, "width": 100, "height": 100} for i in range(1, 5)]
    ground_truth, results = [], []
    for image in images:
        for k, (x, y) in enumerate([(0, 0), (40, 40)]):
            ground_truth.append({"id": len(ground_truth) + 1, "image_id": image["id"], "category_id": 1,
                                 "bbox": [x, y, 20, 20], "area": 400.0, "iscrowd": 0,
                                 "segmentation": [[x, y, x + 20, y, x + 20, y + 20, x, y + 20]]})
            for height in [10, 15, 19, 20]:  # IoU 0.5, 0.75, 0.95, 1
                results.append({"image_id": image["id"], "category_id": 1, "bbox": [x, y, 20, height],
                                "score": 0.5 + 0.1 * k})
    gt = make_coco({"images": images, "annotations": ground_truth, "categories": [{"id": 1, "name": "a"}]})
    dt = quiet(gt.loadRes, results)
    assert_same_results(*run_both(gt, dt, "bbox"))


def test_no_detections(datasets):
    gt, dt = datasets["bbox"]
    empty = make_coco({"images": dt.dataset["images"], "annotations": [],
                       "categories": dt.dataset["categories"]})
    assert_same_results(*run_both(gt, empty, "bbox"))


def test_thread_count_does_not_change_results(datasets):
    gt, dt = datasets["segm"]
    tables = []
    for threads in [1, 3]:
        evaluator = COCOeval_opt(gt, dt, "segm")
        evaluator.num_threads = threads
        quiet(evaluator.evaluate)
        quiet(evaluator.accumulate)
        tables.append(evaluator.eval["precision"])
    np.testing.assert_array_equal(tables[0], tables[1])


class Key(str):
    """A str subclass as a dict key: only Python can tell whether it equals ours."""


def test_numpy_scalars_and_unusual_keys(datasets):
    """numpy scalars (ids, scores, crowd flags), zero scores of either sign and str-subclass keys
    read as pycocotools reads them."""
    gt, dt = datasets["bbox"]
    gt, dt = clone(gt), clone(dt)
    for n, ann in enumerate(gt.dataset["annotations"]):
        ann["id"], ann["image_id"] = np.int64(ann["id"]), np.int32(ann["image_id"])
        ann["iscrowd"] = np.bool_(ann["iscrowd"]) if n % 2 else np.uint8(ann["iscrowd"])
    for n, ann in enumerate(dt.dataset["annotations"]):
        ann["category_id"] = np.int64(ann["category_id"])
        if n % 7 == 0:
            ann["score"] = -0.0 if n % 2 else 0.0
        ann["score"] = np.float32(ann["score"]) if n % 3 == 0 else ann["score"]
    dt.dataset["annotations"][5] = {Key(k): v for k, v in dt.dataset["annotations"][5].items()}
    assert_same_results(*run_both(gt, dt, "bbox"))


def random_polygons(rng, height, width):
    polygons = []
    for _ in range(int(rng.integers(1, 4))):
        points = rng.uniform(-8, max(height, width) + 8, (int(rng.integers(3, 10)), 2))
        points = points.round() if rng.random() < 0.4 else points
        if rng.random() < 0.3:  # annotators' double clicks: a repeated vertex
            j = int(rng.integers(len(points)))
            points = np.insert(points, j, points[j], axis=0)
        polygons.append(points.reshape(-1).tolist())
    return polygons


def decode_counts(counts, height, width):
    values = np.arange(len(counts)) % 2
    return np.repeat(values, counts).astype(np.uint8).reshape(width, height).T


def test_polygon_rasterisation_matches_pycocotools():
    """Small images, and large ones whose long edges cross many pixel columns and rows."""
    rng = np.random.default_rng(0)
    for n in range(500):
        limit = 90 if n < 400 else 600
        height, width = int(rng.integers(1, limit)), int(rng.integers(1, limit))
        polygons = random_polygons(rng, height, width)
        expected = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polygons, height, width)))
        np.testing.assert_array_equal(decode_counts(_cocoeval.mask_counts(polygons, height, width), height, width),
                                      expected)


def test_mask_iou_matches_pycocotools():
    """Polygons against RLEs (str, bytes and list counts), crowd or not, and masks of another
    size (pycocotools: -1 where the boxes overlap)."""
    rng = np.random.default_rng(1)
    for _ in range(100):
        height, width = int(rng.integers(5, 70)), int(rng.integers(5, 70))
        dts = [random_polygons(rng, height, width) for _ in range(3)]
        bitmaps = [(rng.random((height, width)) < rng.random()).astype(np.uint8) for _ in range(3)]
        rles = [mask_util.encode(np.asfortranarray(b)) for b in bitmaps]
        other_size = mask_util.encode(np.ones((height + 1, width), np.uint8, order="F"))
        gts = [rles[0], {"size": rles[1]["size"], "counts": rles[1]["counts"].decode()},
               uncompressed_rle(bitmaps[2]), other_size]
        crowd = rng.integers(0, 2, len(gts)).tolist()
        expected = mask_util.iou([mask_util.merge(mask_util.frPyObjects(p, height, width)) for p in dts],
                                 [mask_util.frPyObjects(g, *g["size"]) if isinstance(g["counts"], list) else g
                                  for g in gts], crowd)
        ours = _cocoeval.mask_iou(dts, gts, crowd, height, width)
        np.testing.assert_array_equal(np.asarray(ours), expected)


def test_errors_name_the_problem(datasets):
    gt, dt = datasets["bbox"]
    with pytest.raises(RuntimeError, match="evaluate"):
        COCOeval_opt(gt, dt, "bbox").accumulate()

    broken = clone(dt)
    del broken.dataset["annotations"][3]["score"]
    with pytest.raises(KeyError, match="detection annotation #3 .* has no 'score'"):
        quiet(COCOeval_opt(gt, broken, "bbox").evaluate)

    broken = clone(dt)
    broken.dataset["annotations"][0]["bbox"] = [1, 2, 3]
    with pytest.raises(ValueError, match="'bbox' must be 4 numbers"):
        quiet(COCOeval_opt(gt, broken, "bbox").evaluate)

    evaluator = COCOeval_opt(gt, dt, "bbox")
    evaluator.params.iouType = "mask"
    with pytest.raises(ValueError, match="iouType"):
        evaluator.evaluate()

    kp_gt, kp_dt = datasets["keypoints"]
    evaluator = COCOeval_opt(kp_gt, kp_dt, "keypoints")
    evaluator.params.kpt_oks_sigmas = evaluator.params.kpt_oks_sigmas[:5]
    with pytest.raises(ValueError, match="kpt_oks_sigmas has 5 keypoints"):
        evaluator.evaluate()
