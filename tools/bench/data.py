"""Training data-loader throughput (`python tools/benchmark.py --task data`).

Images/s of `build_detection_train_loader` with the standard COCO Mask R-CNN input pipeline:
JPEG decode to BGR, ResizeShortestEdge((640, ..., 800), max 1333, "choice"), RandomFlip, five
polygon instances per image turned into Instances with PolygonMasks, aspect-ratio grouping, on
generated 640x480 JPEGs. Also times the mapper alone in the main process, which tells whether
the workers scale.
"""
import os
import statistics
import tempfile
import time

import numpy as np
from PIL import Image

from detzoo.data import DatasetMapper, build_detection_train_loader
from detzoo.data import transforms as T
from detzoo.data.samplers import TrainingSampler
from detzoo.structures import BoxMode

NUM_IMAGES = 64
BATCH_SIZE = 2
IMAGES_PER_ROUND = 64


def _natural_looking_image(rng, h, w):
    """Smooth gradients plus a few flat shapes: decodes like a photo, unlike pure noise."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.stack([xs / w * 255, ys / h * 255, (xs + ys) / (w + h) * 255], axis=2)
    for _ in range(6):
        x0, y0 = rng.integers(0, w - 100), rng.integers(0, h - 100)
        image[y0:y0 + rng.integers(20, 100), x0:x0 + rng.integers(20, 100)] = rng.integers(0, 256, 3)
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _instance(rng, w, h, index):
    cx, cy, r = rng.uniform(60, w - 60), rng.uniform(60, h - 60), rng.uniform(15, 55)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
    xy = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)
    x0, y0 = xy.min(axis=0)
    x1, y1 = xy.max(axis=0)
    return {"id": index, "bbox": [x0, y0, x1 - x0, y1 - y0], "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": int(rng.integers(80)), "iscrowd": 0, "segmentation": [xy.reshape(-1).tolist()]}


def make_dataset(root, num_images=NUM_IMAGES, seed=0):
    """Write `num_images` 640x480 JPEGs (every fourth one portrait) and return their records."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(num_images):
        h, w = (640, 480) if i % 4 == 3 else (480, 640)
        path = os.path.join(root, f"{i:06d}.jpg")
        Image.fromarray(_natural_looking_image(rng, h, w)).save(path, quality=90)
        records.append({"file_name": path, "image_id": i, "height": h, "width": w,
                        "annotations": [_instance(rng, w, h, i * 5 + k) for k in range(5)]})
    return records


def coco_mapper():
    augs = [T.ResizeShortestEdge((640, 672, 704, 736, 768, 800), 1333, "choice"), T.RandomFlip()]
    return DatasetMapper(True, augmentations=augs, image_format="BGR", use_instance_mask=True)


def _images_per_second(loader, rounds):
    batches = iter(loader)
    for _ in range(4):  # start the workers and fill their prefetch queues
        next(batches)
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        count = 0
        while count < IMAGES_PER_ROUND:
            count += len(next(batches))
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def _mapper_ms_per_image(records, mapper, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for record in records[:16]:
            mapper(record)
        times.append((time.perf_counter() - start) / 16)
    return statistics.median(times) * 1e3


def run(args, num_workers=2):
    """Print the mapper's in-process time per image and the loader's images/s."""
    repeat = max(getattr(args, "repeat", 5), 1)
    with tempfile.TemporaryDirectory() as root:
        records = make_dataset(root)
        mapper = coco_mapper()
        np.random.seed(0)
        print(f"mapper alone, main process: {_mapper_ms_per_image(records, mapper, repeat):.1f} ms/image", flush=True)
        loader = build_detection_train_loader(records, mapper=mapper, total_batch_size=BATCH_SIZE,
                                              num_workers=num_workers, sampler=TrainingSampler(len(records), seed=0))
        rate = _images_per_second(loader, repeat)
        print(f"train loader, {num_workers} workers, batch {BATCH_SIZE}, COCO-style augmentation on 640x480 JPEGs: "
              f"{rate:.1f} images/s (median of {repeat} rounds of {IMAGES_PER_ROUND} images)", flush=True)
    return 0
