"""tools/bench/train.py and tools/bench/zoo.py (benchmark tasks `train` and `zoo`) on tiny
images: they run, produce finite losses and write zoo_cpu.json in the documented format."""
import importlib.util
import json
import math
import os
import sys

import pytest
import torch
from torch import nn

from detzoo.layers import FrozenBatchNorm2d

TOOLS = os.path.join(os.path.dirname(__file__), "..", "..", "tools")
SMALL = (64, 96)


def _load(name, path):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def zoo():
    return _load("bench_zoo", os.path.join(TOOLS, "bench", "zoo.py"))


@pytest.fixture(scope="module")
def train():
    return _load("bench_train", os.path.join(TOOLS, "bench", "train.py"))


def test_benchmark_offers_both_tasks():
    benchmark = _load("detzoo_benchmark_script", os.path.join(TOOLS, "benchmark.py"))
    assert {"train", "zoo"} <= set(benchmark.TASKS)


def test_zoo_configs_skip_bases_and_quick_schedules(zoo):
    names = zoo.zoo_configs()
    assert "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml" in names
    assert "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml" in names
    assert not [n for n in names if os.path.basename(n).startswith("Base-") or n.startswith("quick_schedules/")]
    assert zoo.zoo_configs("retinanet_R_50") == ["COCO-Detection/retinanet_R_50_FPN_1x.yaml",
                                                "COCO-Detection/retinanet_R_50_FPN_3x.yaml"]


def test_sizes_follow_the_config(zoo):
    cfg = zoo.load_cfg("Cityscapes/mask_rcnn_R_50_FPN.yaml")
    assert zoo.test_size(cfg) == (cfg.INPUT.MIN_SIZE_TEST, round(cfg.INPUT.MIN_SIZE_TEST * 4 / 3))
    assert zoo.train_size(cfg)[0] == max(cfg.INPUT.MIN_SIZE_TRAIN)
    assert zoo._landscape(800, 1000) == (800, 1000)  # capped by the max size


def test_scene_annotations_are_consistent(zoo):
    scene = zoo.Scene(48, 80, num_classes=5, seed=3, num_keypoints=4, num_sem_seg_classes=6)
    assert scene.image.shape == (3, 48, 80) and scene.image.dtype == torch.uint8
    boxes = scene.boxes
    assert ((boxes[:, :2] >= 0) & (boxes[:, 2:] <= torch.tensor([80.0, 48.0]))).all()
    assert ((scene.classes >= 0) & (scene.classes < 5)).all()
    ys, xs = torch.meshgrid(torch.arange(48) + 0.5, torch.arange(80) + 0.5, indexing="ij")
    for mask, box in zip(scene.masks, boxes):
        assert mask.any()
        inside = (xs >= box[0]) & (xs <= box[2]) & (ys >= box[1]) & (ys <= box[3])
        assert not (mask & ~inside).any()  # every mask pixel lies in its box
    points = scene.keypoints[..., :2]
    assert ((points >= boxes[:, None, :2]) & (points <= boxes[:, None, 2:])).all()
    assert scene.sem_seg.max() < 6 and scene.sem_seg.min() >= 0


def test_calibrated_frozen_norms_give_unit_scale_activations(zoo):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), FrozenBatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), FrozenBatchNorm2d(8))
    x = torch.rand(2, 3, 16, 16) * 255  # Detectron2's 0-255 inputs
    zoo.calibrate_batch_norms(net, lambda: net(x))
    out = net(x)
    torch.testing.assert_close(out.mean((0, 2, 3)), torch.zeros(8), atol=1e-3, rtol=0)
    torch.testing.assert_close(out.var((0, 2, 3)), torch.ones(8), atol=1e-2, rtol=0)


@pytest.mark.slow  # builds full R50-FPN models: tens of seconds on 2 cores
def test_zoo_config_benchmark_runs_on_a_tiny_image(zoo):
    result = zoo.benchmark_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", 1, 1, SMALL, SMALL)
    assert set(result) == {"inference_s_per_im", "train_s_per_iter"}
    assert all(isinstance(v, float) and 0 < v < 60 for v in result.values())


def test_results_merge_into_the_documented_format(zoo, tmp_path):
    path = str(tmp_path / "benchmarks" / "zoo_cpu.json")
    first = {"inference_s_per_im": 1.5, "train_s_per_iter": 9.25}
    zoo.merge_results(path, {"COCO-Detection/b.yaml": first}, threads=2, cpu="cpu X (avx2)")
    zoo.merge_results(path, {"COCO-Detection/a.yaml": first}, threads=2, cpu="cpu X (avx2)")
    with open(path) as f:
        document = json.load(f)
    assert list(document) == ["cpu", "torch", "threads", "date", "results"]
    assert (document["cpu"], document["torch"], document["threads"]) == ("cpu X (avx2)", torch.__version__, 2)
    assert len(document["date"]) == 10 and document["date"][4] == "-"
    assert list(document["results"]) == ["COCO-Detection/a.yaml", "COCO-Detection/b.yaml"]
    assert document["results"]["COCO-Detection/b.yaml"] == first
    # figures from another machine are not mixed in
    zoo.merge_results(path, {"COCO-Detection/c.yaml": first}, threads=2, cpu="cpu Y")
    with open(path) as f:
        assert list(json.load(f)["results"]) == ["COCO-Detection/c.yaml"]


def test_size_flag_parsing(train):
    assert train.parse_size(None) == train.DEFAULT_SIZE
    assert train.parse_size("512x768") == (512, 768)
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        train.parse_size("512")


@pytest.mark.slow  # builds full R50-FPN models: tens of seconds on 2 cores
def test_train_benchmark_compares_both_libraries_on_a_tiny_batch(train):
    result = train.benchmark(SMALL, repeat=1, inference_repeat=1)
    for key in ("train_ms", "inference_ms"):
        assert set(result[key]) == {"detzoo", "torchvision"} and all(v > 0 for v in result[key].values())
    assert result["detections"] == {"detzoo": 100, "torchvision": 100}  # equal workload at threshold 0
    for losses in result["losses"].values():
        assert len(losses) == 5 and all(math.isfinite(v) for v in losses.values())
    assert any("sampling ratio 0" in note for note in result["notes"])
