"""demo/demo.py (+ demo/predictor.py), tools/visualize_data.py and tools/visualize_json_results.py,
run on a few synthetic shapes images with a randomly initialized Mask R-CNN (score threshold 0,
so that it always has something to draw)."""
import glob
import importlib.util
import json
import logging
import os
import subprocess
import sys

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detzoo.data import DatasetCatalog, MetadataCatalog
from detzoo.data.datasets import register_coco_instances
from detzoo.data.datasets.shapes import generate_shapes

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CONFIG = os.path.join(REPO, "configs", "quick_schedules", "detzoo", "mask_rcnn_R_50_FPN_shapes.yaml")
# Small test images, few proposals and detections: a forward pass takes a fraction of a second.
FAST_OPTS = ["MODEL.RPN.POST_NMS_TOPK_TEST", "50", "TEST.DETECTIONS_PER_IMAGE", "5",
             "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192"]
DATASET = "detzoo_test_demo_tools_shapes"
DIFF = 12  # a pixel counts as drawn on when a channel moved by more than this


def _load_script(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo_module():
    sys.path.insert(0, os.path.join(REPO, "demo"))  # demo.py imports its sibling `predictor`
    try:
        yield _load_script("detzoo_demo_script", os.path.join(REPO, "demo", "demo.py"))
    finally:
        sys.path.remove(os.path.join(REPO, "demo"))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Three small shapes images (JPEG, with their COCO json), registered as DATASET, and PNG
    copies of them (lossless, so that drawn pixels can be told from compression noise)."""
    root = tmp_path_factory.mktemp("datasets")
    folder = generate_shapes(str(root / "shapes"), "instances", "val", num_images=3, seed=5, image_size=(96, 128))
    shapes_meta = MetadataCatalog.get("shapes_val")
    metadata = {key: shapes_meta.get(key) for key in ("thing_classes", "thing_colors",
                                                      "thing_dataset_id_to_contiguous_id")}
    register_coco_instances(DATASET, metadata, os.path.join(folder, "instances.json"), os.path.join(folder, "images"))
    png_dir = root / "png"
    png_dir.mkdir()
    for path in sorted(glob.glob(os.path.join(folder, "images", "*.jpg"))):
        name = os.path.splitext(os.path.basename(path))[0] + ".png"
        cv2.imwrite(str(png_dir / name), cv2.imread(path))
    yield {"folder": folder, "json": os.path.join(folder, "instances.json"), "png_dir": str(png_dir)}
    DatasetCatalog.remove(DATASET)
    MetadataCatalog.remove(DATASET)


def _changed(drawn, original):
    """bool[H, W]: where the drawing differs from the image."""
    return np.abs(drawn[:, :, :3].astype(int) - original.astype(int)).max(axis=2) > DIFF


def _box_region(shape, boxes, margin=2):
    """bool[H, W]: the union of XYXY boxes, grown by `margin` pixels (the outline's width)."""
    region = np.zeros(shape[:2], dtype=bool)
    for x0, y0, x1, y1 in np.asarray(boxes).reshape(-1, 4):
        top, left = max(int(y0) - margin, 0), max(int(x0) - margin, 0)
        region[top:int(np.ceil(y1)) + margin, left:int(np.ceil(x1)) + margin] = True
    return region


# ------------------------------------------------------------------------------ demo
def test_demo_script_on_image_glob(shapes, tmp_path):
    out_dir = tmp_path / "out"
    env = dict(os.environ, DETZOO_DATASETS=str(tmp_path / "datasets"), PYTHONPATH=REPO)
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "demo", "demo.py"), "--config-file", CONFIG,
         "--input", os.path.join(shapes["png_dir"], "*.png"), "--output", str(out_dir),
         "--confidence-threshold", "0.0", "--opts", *FAST_OPTS],
        capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    inputs = sorted(glob.glob(os.path.join(shapes["png_dir"], "*.png")))
    for path in inputs:
        assert f"{path}: detected 5 instances in " in result.stdout
        original = cv2.imread(path)
        drawn = cv2.imread(str(out_dir / os.path.basename(path)))
        assert drawn is not None and drawn.shape == original.shape
        assert _changed(drawn, original).mean() > 0.02
    assert "100%" in result.stderr  # the tqdm bar


def test_run_on_image_draws_at_the_predictions(demo_module, shapes):
    from predictor import VisualizationDemo

    torch.manual_seed(0)
    args = demo_module.get_parser().parse_args(
        ["--config-file", CONFIG, "--input", "x", "--confidence-threshold", "0.0", "--opts", *FAST_OPTS])
    demo = VisualizationDemo(demo_module.setup_cfg(args))
    image = cv2.imread(sorted(glob.glob(os.path.join(shapes["png_dir"], "*.png")))[0])
    predictions, vis = demo.run_on_image(image)
    instances = predictions["instances"]
    assert len(instances) == 5 and instances.has("pred_masks")
    drawn = vis.get_image()  # RGB
    assert drawn.shape == image.shape
    changed = _changed(drawn, image[:, :, ::-1])
    region = _box_region(image.shape, instances.pred_boxes.tensor.numpy())
    assert changed[region].mean() > 0.1

    # the other outputs a model may give: semantic and panoptic segmentation
    height, width = image.shape[:2]
    sem_seg = torch.zeros(3, height, width)
    sem_seg[1, height // 2:] = 1.0
    demo.predictor = lambda img: {"sem_seg": sem_seg}
    _, vis = demo.run_on_image(image)
    assert _changed(vis.get_image(), image[:, :, ::-1])[height // 2 + 4:].mean() > 0.5
    panoptic = torch.zeros(height, width, dtype=torch.int32)
    panoptic[10:40, 10:40] = 1
    demo.predictor = lambda img: {"panoptic_seg": (panoptic, [{"id": 1, "category_id": 2, "isthing": True}])}
    _, vis = demo.run_on_image(image)
    changed = _changed(vis.get_image(), image[:, :, ::-1])
    assert changed[14:36, 14:36].mean() > 0.5


def _write_video(path, image, num_frames=5):
    """A short mp4 of `image` sliding right by 2 pixels a frame; returns the frames."""
    height, width = image.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (width, height), True)
    assert writer.isOpened()
    frames = [np.roll(image, 2 * i, axis=1) for i in range(num_frames)]
    for frame in frames:
        writer.write(frame)
    writer.release()
    return frames


def _read_video(path):
    video = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = video.read()
        if not ok:
            break
        frames.append(frame)
    video.release()
    return frames


def test_demo_on_video_writes_an_mp4(demo_module, shapes, tmp_path):
    image = cv2.imread(sorted(glob.glob(os.path.join(shapes["png_dir"], "*.png")))[1])
    video_path = tmp_path / "clip.avi"
    _write_video(video_path, image)
    inputs = _read_video(video_path)  # as decoded, to compare with
    out_dir = tmp_path / "out"
    argv = ["--config-file", CONFIG, "--video-input", str(video_path), "--output", str(out_dir),
            "--confidence-threshold", "0.0", "--opts", *FAST_OPTS]
    written = demo_module.main(argv)
    assert written == [str(out_dir / "clip.mp4")]
    outputs = _read_video(written[0])
    assert len(outputs) == len(inputs) == 5
    for drawn, original in zip(outputs, inputs):
        assert drawn.shape == original.shape
        assert _changed(drawn, original).mean() > 0.02
    with pytest.raises(SystemExit):  # never overwrites
        demo_module.main(argv)


def test_demo_without_output_or_display_writes_nothing(demo_module, shapes, tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.chdir(tmp_path)
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("detzoo").addHandler(handler)
    try:
        image = sorted(glob.glob(os.path.join(shapes["png_dir"], "*.png")))[0]
        written = demo_module.main(["--config-file", CONFIG, "--input", image, "--confidence-threshold", "0.0",
                                    "--opts", *FAST_OPTS])
    finally:
        logging.getLogger("detzoo").removeHandler(handler)
    assert written == []
    assert any("nothing will be written" in m for m in messages)
    assert any("detected 5 instances" in m for m in messages)
    assert os.listdir(tmp_path) == []


def test_demo_single_output_file(demo_module, shapes, tmp_path):
    image = sorted(glob.glob(os.path.join(shapes["png_dir"], "*.png")))[2]
    out = tmp_path / "sub" / "drawn.jpg"
    written = demo_module.main(["--config-file", CONFIG, "--input", image, "--output", str(out),
                                "--confidence-threshold", "0.0", "--opts", *FAST_OPTS])
    assert written == [str(out)]
    assert cv2.imread(str(out)).shape == cv2.imread(image).shape


@pytest.mark.parametrize("argv, message", [
    ([], "exactly one of"),
    (["--input", "/nonexistent/*.png"], "matches no file"),
    (["--webcam", "--output", "x"], "not supported with --webcam"),
    (["--video-input", "/nonexistent.mp4"], "is not a file"),
    (["--webcam"], "no display is available"),
])
def test_demo_argument_errors(demo_module, capsys, monkeypatch, argv, message):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(SystemExit) as error:
        demo_module.main(["--config-file", CONFIG, *argv])
    assert error.value.code == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------ visualize_data
@pytest.fixture(scope="module")
def visualize_data():
    return _load_script("detzoo_visualize_data", os.path.join(REPO, "tools", "visualize_data.py"))


def test_visualize_data_annotations(visualize_data, shapes, tmp_path):
    written = visualize_data.main(["--source", "annotation", "--config-file", CONFIG, "--output-dir", str(tmp_path),
                                   "DATASETS.TRAIN", f"('{DATASET}',)"])
    dicts = DatasetCatalog.get(DATASET)
    assert sorted(written) == sorted(str(tmp_path / os.path.basename(d["file_name"])) for d in dicts)
    for dic in dicts:
        original = cv2.imread(dic["file_name"])
        drawn = cv2.imread(str(tmp_path / os.path.basename(dic["file_name"])))
        assert drawn.shape == original.shape
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in dic["annotations"])]
        assert _changed(drawn, original)[_box_region(original.shape, boxes)].mean() > 0.1


def test_visualize_data_dataloader(visualize_data, shapes, tmp_path):
    written = visualize_data.main(["--source", "dataloader", "--config-file", CONFIG, "--output-dir", str(tmp_path),
                                   "--num-images", "2", "DATASETS.TRAIN", f"('{DATASET}',)",
                                   "INPUT.MIN_SIZE_TRAIN", "(160,)", "SOLVER.IMS_PER_BATCH", "1",
                                   "DATALOADER.NUM_WORKERS", "0"])
    assert len(written) == 2
    image_ids = {d["image_id"] for d in DatasetCatalog.get(DATASET)}
    for path in written:
        assert int(os.path.splitext(os.path.basename(path))[0]) in image_ids
        drawn = cv2.imread(path)
        assert min(drawn.shape[:2]) == 160  # the loader's resized image, as the model sees it


# ------------------------------------------------------------------------------ visualize_json_results
def _fake_results(json_file):
    """COCO results made from the ground truth (score 0.9, with RLE masks) plus one low-score
    box per image."""
    with open(json_file) as f:
        coco = json.load(f)
    sizes = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
    results = []
    for ann in coco["annotations"]:
        height, width = sizes[ann["image_id"]]
        rle = mask_util.merge(mask_util.frPyObjects(ann["segmentation"], height, width))
        rle["counts"] = rle["counts"].decode("ascii")
        results.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": ann["bbox"],
                        "score": 0.9, "segmentation": rle})
    for image_id in sizes:
        results.append({"image_id": image_id, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.1})
    return results


def test_visualize_json_results(shapes, tmp_path):
    tool = _load_script("detzoo_visualize_json_results", os.path.join(REPO, "tools", "visualize_json_results.py"))
    results_file = tmp_path / "coco_instances_results.json"
    results_file.write_text(json.dumps(_fake_results(shapes["json"])))
    out_dir = tmp_path / "out"
    written = tool.main(["--input", str(results_file), "--output", str(out_dir), "--dataset", DATASET,
                         "--conf-threshold", "0.5"])
    dicts = DatasetCatalog.get(DATASET)
    assert len(written) == len(dicts)
    for dic in dicts:
        original = cv2.imread(dic["file_name"])
        drawn = cv2.imread(str(out_dir / os.path.basename(dic["file_name"])))
        height, width = original.shape[:2]
        assert drawn.shape == (height, 2 * width, 3)  # predictions | ground truth
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in dic["annotations"])]
        region = _box_region(original.shape, boxes)
        assert _changed(drawn[:, :width], original)[region].mean() > 0.3  # the predicted masks are filled
        assert _changed(drawn[:, width:], original)[region].mean() > 0.1

    # all scores below the threshold: nothing to draw
    assert tool.main(["--input", str(results_file), "--output", str(tmp_path / "none"), "--dataset", DATASET,
                      "--conf-threshold", "0.95"]) == []

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": dicts[0]["image_id"], "category_id": 42, "bbox": [0, 0, 5, 5],
                                "score": 1.0}]))
    with pytest.raises(ValueError, match="category_id 42"):
        tool.main(["--input", str(bad), "--output", str(tmp_path / "bad"), "--dataset", DATASET])
