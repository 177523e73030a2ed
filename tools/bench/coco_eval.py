"""COCO evaluation time (evaluate() + accumulate()): detzoo's COCOeval_opt against pycocotools
and, when installed (`pip install faster-coco-eval hotcoco`), faster-coco-eval and hotcoco.

Used by `tools/benchmark.py --task coco-eval [--images 5000] [--filter segm] [--repeat 3]`.

The generated set is COCO-val-like: 640x480 images, 80 categories, 0-14 objects per image
(polygons, crowd regions as RLEs with list counts, blobs of 20-180 px so all three area ranges
occur) and 100 detections per image (jittered copies of the objects and random ones; masks as
compressed RLEs). Keypoints: one category, 0-6 people per image, 30 detections per image.
Rows: the first 500 and 1000 images of the set, and the whole set (`--images`).

What is timed, and what is not: each library loads the same dicts with its own loader, outside
the timing (pycocotools' COCO + loadRes for detzoo and pycocotools, faster_coco_eval.COCO +
loadRes, hotcoco.COCO + load_res), then `evaluate()` and `accumulate()` are timed. The loaders
do not do the same share of the work: hotcoco (Rust) converts every annotation into its own
structures when it loads them, so its timed region starts from converted data, while detzoo
reads the annotation dicts of the COCO objects inside `evaluate()` (users hand it pycocotools
COCO objects, whose dicts it must read). That reading is in detzoo's time and not in hotcoco's:
the comparison leans in hotcoco's favour. DETZOO_COCOEVAL_TIMING=1 prints detzoo's share.

The time is the median of `--repeat` runs, each on fresh objects (pycocotools rewrites
annotations during evaluate()). pycocotools, whose evaluation takes minutes on thousands of
images, runs once and only on the 500-image row; its ratio there stands for the larger rows.
The printed AP (stats[0]) of every library must agree.
"""
import contextlib
import gc
import io
import statistics
import time

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detzoo.evaluation import COCOeval_opt

WIDTH, HEIGHT = 640, 480
NUM_CATEGORIES = 80
NUM_KEYPOINTS = 17
DETECTIONS_PER_IMAGE = {"bbox": 100, "segm": 100, "keypoints": 30}
SUBSET_IMAGES = (500, 1000)  # rows besides the whole set
PYCOCOTOOLS_MAX_IMAGES = 500  # pycocotools is timed on rows up to this size only


def _quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


class Blob:
    """A star-shaped polygon of about `size` px and its rasterised runs, placed anywhere by
    shifting the runs (cheap: no rasterisation per detection)."""

    def __init__(self, rng, size):
        n = int(rng.integers(6, 16))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radius = rng.uniform(0.6, 1.0, n) * size / 2
        aspect = rng.uniform(0.6, 1.6)
        xs = size / 2 + np.cos(angles) * radius * aspect
        ys = size / 2 + np.sin(angles) * radius / aspect
        self.polygon = np.stack([xs - xs.min(), ys - ys.min()], 1).round(2)
        self.width = int(np.ceil(self.polygon[:, 0].max())) + 1
        self.height = int(np.ceil(self.polygon[:, 1].max())) + 1
        rle = mask_util.frPyObjects([self.polygon.reshape(-1).tolist()], self.height, self.width)[0]
        mask = mask_util.decode(rle)
        self.area = float(mask.sum())
        # runs per column: (column, first row, end row)
        padded = np.pad(mask.T, ((0, 0), (1, 1))).astype(np.int8)
        col, row = np.nonzero(np.diff(padded, axis=1))
        self.run_columns, self.run_starts, self.run_ends = col[0::2], row[0::2], row[1::2]

    def polygon_at(self, x, y):
        return (self.polygon + [x, y]).reshape(-1).tolist()

    def rle_at(self, x, y, compressed=True):
        """RLE of the blob with its top-left corner at integer (x, y), clipped to the image."""
        columns = self.run_columns + x
        starts = np.clip(self.run_starts + y, 0, HEIGHT)
        ends = np.clip(self.run_ends + y, 0, HEIGHT)
        keep = (columns >= 0) & (columns < WIDTH) & (ends > starts)
        starts = columns[keep] * HEIGHT + starts[keep]
        ends = columns[keep] * HEIGHT + ends[keep]
        bounds = np.stack([starts, ends], 1).reshape(-1)
        counts = np.diff(np.concatenate([[0], bounds, [WIDTH * HEIGHT]])).tolist()
        rle = {"size": [HEIGHT, WIDTH], "counts": counts}
        if not compressed:
            return rle
        rle = mask_util.frPyObjects(rle, HEIGHT, WIDTH)
        return {"size": rle["size"], "counts": rle["counts"].decode()}


def make_ground_truth(rng, num_images, blobs, keypoints):
    images, annotations = [], []
    num_categories = 1 if keypoints else NUM_CATEGORIES
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": WIDTH, "height": HEIGHT})
        for _ in range(int(rng.integers(0, 7 if keypoints else 15))):
            blob = blobs[int(rng.integers(len(blobs)))]
            x, y = int(rng.integers(-10, WIDTH - blob.width + 10)), int(rng.integers(0, HEIGHT - blob.height))
            crowd = int(rng.random() < 0.02)
            ann = {"id": len(annotations) + 1, "image_id": image_id, "iscrowd": crowd,
                   "category_id": int(rng.integers(1, num_categories + 1)),
                   "bbox": [float(x), float(y), float(blob.width), float(blob.height)], "area": blob.area,
                   "segmentation": blob.rle_at(x, y, compressed=False) if crowd else [blob.polygon_at(x, y)],
                   "blob": blob}
            if keypoints:
                visible = rng.random(NUM_KEYPOINTS) < 0.6
                kx = np.where(visible, x + rng.random(NUM_KEYPOINTS) * blob.width, 0).round(1)
                ky = np.where(visible, y + rng.random(NUM_KEYPOINTS) * blob.height, 0).round(1)
                ann["keypoints"] = np.stack([kx, ky, visible * 2], 1).reshape(-1).tolist()
                ann["num_keypoints"] = int(visible.sum())
            annotations.append(ann)
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, num_categories + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def make_results(rng, gt, iou_type, blobs):
    by_image = {}
    for ann in gt["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    num_categories = len(gt["categories"])
    results = []
    for image in gt["images"]:
        objects = by_image.get(image["id"], [])
        for _ in range(DETECTIONS_PER_IMAGE[iou_type]):
            near = objects[int(rng.integers(len(objects)))] if objects and rng.random() < 0.5 else None
            if near is not None:
                blob = near["blob"] if rng.random() < 0.7 else blobs[int(rng.integers(len(blobs)))]
                shift = rng.normal(0, 0.1, 2) * [blob.width, blob.height]
                x, y = int(near["bbox"][0] + shift[0]), int(near["bbox"][1] + shift[1])
                category = near["category_id"] if rng.random() < 0.8 else int(rng.integers(1, num_categories + 1))
                score = 1 - np.abs(shift).sum() / (blob.width + blob.height)
            else:
                blob = blobs[int(rng.integers(len(blobs)))]
                x, y = int(rng.integers(0, WIDTH - blob.width)), int(rng.integers(0, HEIGHT - blob.height))
                category, score = int(rng.integers(1, num_categories + 1)), rng.random() * 0.7
            result = {"image_id": image["id"], "category_id": category,
                      "score": float(np.clip(score + rng.normal(0, 0.1), 0, 1).round(3))}
            if iou_type == "bbox":
                result["bbox"] = [float(x), float(y), float(blob.width), float(blob.height)]
            elif iou_type == "segm":
                result["segmentation"] = blob.rle_at(x, y)
            else:
                points = np.asarray(near["keypoints"]).reshape(-1, 3) if near is not None else None
                kx = rng.uniform(x, x + blob.width, NUM_KEYPOINTS) if points is None else points[:, 0] + rng.normal(0, 4, NUM_KEYPOINTS)
                ky = rng.uniform(y, y + blob.height, NUM_KEYPOINTS) if points is None else points[:, 1] + rng.normal(0, 4, NUM_KEYPOINTS)
                result["keypoints"] = np.stack([kx, ky, np.ones(NUM_KEYPOINTS)], 1).reshape(-1).round(2).tolist()
            results.append(result)
    return results


def make_set(num_images, iou_type, seed=0):
    """(ground-truth dataset dict, result dicts) of the generated set."""
    rng = np.random.default_rng(seed)
    blobs = [Blob(rng, size) for size in np.geomspace(20, 180, 48)]
    gt = make_ground_truth(rng, num_images, blobs, keypoints=iou_type == "keypoints")
    results = make_results(rng, gt, iou_type, blobs)
    for ann in gt["annotations"]:
        del ann["blob"]
    return gt, results


def _copies(gt, results):
    """Shallow copies of every dict: loaders add fields to them and pycocotools replaces
    segmentations."""
    dataset = {key: [dict(item) for item in value] for key, value in gt.items()}
    return dataset, [dict(r) for r in results]


def _pycocotools_objects(gt, results):
    dataset, results = _copies(gt, results)
    coco = COCO()
    coco.dataset = dataset
    _quiet(coco.createIndex)
    return coco, _quiet(coco.loadRes, results)


def _make_runner(library, threads):
    """(prepare(gt, results) -> state, evaluate(state, iou_type) -> AP), or None if missing."""
    if library in ("pycocotools", "detzoo"):
        cls = COCOeval if library == "pycocotools" else COCOeval_opt

        def evaluate(state, iou_type):
            evaluator = cls(*state, iou_type)
            if library == "detzoo":
                evaluator.num_threads = threads
            return evaluator

        return _pycocotools_objects, evaluate
    if library == "faster-coco-eval":
        try:
            import faster_coco_eval
        except ImportError:
            return None

        def prepare(gt, results):
            dataset, results = _copies(gt, results)
            coco = faster_coco_eval.COCO(dataset)
            return coco, _quiet(coco.loadRes, results)

        return prepare, lambda state, iou_type: faster_coco_eval.COCOeval_faster(*state, iou_type)
    try:
        import hotcoco
    except ImportError:
        return None

    def prepare(gt, results):
        dataset, results = _copies(gt, results)
        coco = hotcoco.COCO(dataset)
        return coco, coco.load_res(results)

    return prepare, lambda state, iou_type: hotcoco.COCOeval(*state, iou_type)


def time_library(library, gt, results, iou_type, repeat, threads):
    """Median seconds of evaluate() + accumulate(), and the AP; None if not installed or (for
    pycocotools) if the set is too large to wait for."""
    if library == "pycocotools" and len(gt["images"]) > PYCOCOTOOLS_MAX_IMAGES:
        return None
    runner = _make_runner(library, threads)
    if runner is None:
        return None
    prepare, make_evaluator = runner
    times, ap = [], None
    for _ in range(1 if library == "pycocotools" else repeat):
        evaluator = make_evaluator(prepare(gt, results), iou_type)
        gc.collect()  # not the garbage of the set's construction into this library's time
        tic = time.perf_counter()
        _quiet(evaluator.evaluate)
        _quiet(evaluator.accumulate)
        times.append(time.perf_counter() - tic)
        _quiet(evaluator.summarize)
        ap = float(evaluator.stats[0])
    return statistics.median(times), ap


def _subset(gt, results, num_images):
    gt = dict(gt, images=gt["images"][:num_images],
              annotations=[a for a in gt["annotations"] if a["image_id"] <= num_images])
    return gt, [r for r in results if r["image_id"] <= num_images]


def run(args):
    """Print one row per (IoU type, set size): the time of each library and its ratio to ours."""
    libraries = ["detzoo", "pycocotools", "faster-coco-eval", "hotcoco"]
    num_images = getattr(args, "images", 5000)
    print(f"{'set':<26s}" + "".join(f"{name:>22s}" for name in libraries) + "   AP (all agree?)", flush=True)
    slower = []
    for iou_type in ["bbox", "segm", "keypoints"]:
        if args.filter and args.filter not in iou_type:
            continue
        tic = time.perf_counter()
        full = make_set(num_images, iou_type)
        print(f"# {iou_type}: generated {num_images} images, {len(full[0]['annotations'])} objects, "
              f"{len(full[1])} detections in {time.perf_counter() - tic:.0f} s", flush=True)
        sizes = sorted({min(size, num_images) for size in SUBSET_IMAGES} | {num_images})
        for size in sizes:
            gt, results = _subset(*full, size)
            row = {name: time_library(name, gt, results, iou_type, args.repeat, args.threads)
                   for name in libraries}
            ours = row["detzoo"][0]
            cells = []
            for name in libraries:
                if row[name] is None:
                    skipped = name == "pycocotools" and size > PYCOCOTOOLS_MAX_IMAGES
                    cells.append(f"skipped (see {PYCOCOTOOLS_MAX_IMAGES})" if skipped else "not installed")
                    continue
                cells.append(f"{row[name][0]:8.2f} s" + ("" if name == "detzoo" else f" ({row[name][0] / ours:5.1f}x)"))
                if name != "detzoo" and row[name][0] < ours:
                    slower.append(f"{iou_type}/{size} vs {name}")
            aps = [r[1] for r in row.values() if r is not None]
            agree = max(aps) - min(aps) < 1e-4
            print(f"{iou_type + ' ' + str(size) + ' img x ' + str(DETECTIONS_PER_IMAGE[iou_type]) + ' det':<26s}"
                  + "".join(f"{c:>22s}" for c in cells) + f"   {row['detzoo'][1]:.4f} ({'yes' if agree else 'NO: ' + str(aps)})",
                  flush=True)
    print("ratio = library time / detzoo time (> 1: detzoo faster); "
          + (f"detzoo slower in: {', '.join(slower)}" if slower else "detzoo fastest everywhere"))
    return 0
