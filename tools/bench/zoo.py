"""CPU speed of the model-zoo configs with random weights
(`python tools/benchmark.py --task zoo [--filter mask_rcnn_R_50] [--threads 2]`).

For every zoo config (configs/**/*.yaml without the Base-* files and quick_schedules/) the
model is built from the config alone (class counts come from its keys, no dataset is read)
with random weights; every batch norm, frozen or not, then takes the statistics of its input
on the inference image (`calibrate_batch_norms`), so activations have a trained network's
scale and the RPN and ROI heads handle as many boxes as they would with trained weights.
Two figures per config:

* inference_s_per_im: eval mode, one synthetic image whose short side is INPUT.MIN_SIZE_TEST
  and whose long side follows COCO's usual 4:3 landscape shape (capped by MAX_SIZE_TEST);
  post-processing (box rescale, mask pasting) included; warm-up 1, median of 3.
* train_s_per_iter: one optimizer step (forward, backward, SGD with momentum) on a batch of
  2 images whose short side is the largest INPUT.MIN_SIZE_TRAIN (the costliest of the
  multi-scale sizes), 4:3 landscape, capped by MAX_SIZE_TRAIN; warm-up 1, median of 2.

The synthetic images carry 8 elliptical instances each, with the annotations the config
trains on: boxes and classes; masks in INPUT.MASK_FORMAT; 17 keypoints; a semantic map;
precomputed proposals for Fast R-CNN. The learning rate is tiny (1e-6) so that every timed
iteration sees practically the same weights: a random-weight model trained at the config's
rate can diverge after a step and change the work (proposal counts) of the next ones.

Each entry also records when it was measured ("measured", UTC): the reference machine is a
virtual machine whose speed drifts between days, so only rows measured close in time compare
well. Results are merged into benchmarks/zoo_cpu.json (read by tools/bench/zoo_table.py to write
MODEL_ZOO.md), so runs with --filter accumulate; entries measured on another CPU or with
another thread count are dropped, since they could not be compared.
"""
import datetime
import gc
import json
import os
import statistics
import time
import traceback
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torchvision

import detzoo
from detzoo.config import CfgNode, get_cfg
from detzoo.layers import FrozenBatchNorm2d
from detzoo.modeling import build_model
from detzoo.structures import BitMasks, Boxes, Instances, Keypoints, PolygonMasks
from detzoo.utils.collect_env import cpu_summary
from detzoo.utils.events import EventStorage

CONFIG_ROOT = os.path.join(os.path.dirname(detzoo.__file__), "model_zoo", "configs")
DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                              "benchmarks", "zoo_cpu.json")
_FROZEN_BN = (FrozenBatchNorm2d, torchvision.ops.FrozenBatchNorm2d)
ASPECT = 4 / 3  # COCO images are mostly 640x480 landscapes
IMAGES_PER_BATCH = 2
NUM_INSTANCES = 8
POLYGON_POINTS = 24
INFERENCE_REPEAT = 3
TRAIN_REPEAT = 2
LEARNING_RATE = 1e-6


# ----------------------------------------------------------------------------- configs
def zoo_configs(name_filter: Optional[str] = None) -> List[str]:
    """Zoo config names relative to the config root ("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"),
    sorted, without Base-* files and quick_schedules/, keeping those containing `name_filter`."""
    names = []
    for folder, subfolders, files in os.walk(CONFIG_ROOT):
        subfolders[:] = sorted(d for d in subfolders if d != "quick_schedules")
        for fname in files:
            if fname.endswith(".yaml") and not fname.startswith("Base-"):
                names.append(os.path.relpath(os.path.join(folder, fname), CONFIG_ROOT).replace(os.sep, "/"))
    return sorted(n for n in names if name_filter is None or name_filter in n)


def load_cfg(config: str) -> CfgNode:
    """The config `config` (a path, or a name relative to the config root) on the CPU."""
    path = config if os.path.isfile(config) else os.path.join(CONFIG_ROOT, config)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config {config!r}: neither a file nor a name under {CONFIG_ROOT}")
    cfg = get_cfg()
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


def set_frozen_bn_to_identity(model: torch.nn.Module) -> None:
    """Every frozen batch norm (detzoo's and torchvision's) becomes y = x: mean 0, var 1,
    weight 1, bias 0, in place of random statistics."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _FROZEN_BN):
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
                module.weight.fill_(1.0)
                module.bias.zero_()


def calibrate_batch_norms(model: torch.nn.Module, run_once: Callable[[], object]) -> None:
    """Give every batch norm (frozen or not) the per-channel mean and variance of its own input
    during `run_once()` (one inference pass), layer after layer.

    Identity norms stacked over 50 layers of random convolutions let activations grow to
    ~1e3 on FPN outputs; the RPN then decodes nearly every anchor into the whole image and
    keeps 2 proposals instead of 1000, and timings measure an unrealistically idle model.
    Calibrated statistics give unit-scale activations, as a trained backbone has.
    """
    def set_statistics(module, args):
        x = args[0].detach().float()
        dims = [d for d in range(x.dim()) if d != 1]
        module.running_mean.copy_(x.mean(dims))
        module.running_var.copy_(x.var(dims))

    norms = [m for m in model.modules() if isinstance(m, _FROZEN_BN + (torch.nn.modules.batchnorm._BatchNorm,))]
    handles = [m.register_forward_pre_hook(set_statistics) for m in norms]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            run_once()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def build_random_model(cfg: CfgNode, seed: int = 0, calibration_inputs: Optional[List[Dict]] = None) -> torch.nn.Module:
    """The model of `cfg` with random weights, identity frozen norms, and when
    `calibration_inputs` are given, norm statistics calibrated on them."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    set_frozen_bn_to_identity(model)
    if calibration_inputs is not None:
        calibrate_batch_norms(model, lambda: model(calibration_inputs))
    return model


def train_size(cfg: CfgNode) -> Tuple[int, int]:
    """(height, width) of the training images: the largest MIN_SIZE_TRAIN, 4:3, capped."""
    return _landscape(max(cfg.INPUT.MIN_SIZE_TRAIN), cfg.INPUT.MAX_SIZE_TRAIN)


def test_size(cfg: CfgNode) -> Tuple[int, int]:
    """(height, width) of the inference image: MIN_SIZE_TEST, 4:3, capped by MAX_SIZE_TEST."""
    return _landscape(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)


def _landscape(short_side: int, max_long_side: int) -> Tuple[int, int]:
    long_side = min(int(round(short_side * ASPECT)), max_long_side)
    return short_side, long_side


# ----------------------------------------------------------------------------- synthetic data
class Scene:
    """One synthetic image with its annotations.

    Attributes:
        image (Tensor[3, H, W]): uint8, BGR.
        boxes (Tensor[N, 4]): float32, XYXY_ABS, the tight boxes of the ellipses.
        classes (Tensor[N]): int64 in [0, num_classes).
        polygons (list[list[ndarray]]): per instance one closed polygon [x0, y0, ...] (float64).
        masks (Tensor[N, H, W]): bool, the ellipses rasterised.
        keypoints (Tensor[N, K, 3]): float32 (x, y, visibility 2) inside each ellipse's box.
        sem_seg (Tensor[H, W]): int64 class map, the instances painted over a background class.
    """

    def __init__(self, height: int, width: int, num_classes: int, seed: int,
                 num_keypoints: int = 17, num_sem_seg_classes: int = 54, num_instances: int = NUM_INSTANCES):
        rng = np.random.default_rng(seed)
        self.image = torch.from_numpy(rng.integers(0, 256, (3, height, width), dtype=np.uint8))
        # Ellipses of 1/16 to 1/3 of the short side, anywhere inside the image.
        radius = rng.uniform(min(height, width) / 32, min(height, width) / 6, (num_instances, 2))
        low, high = radius + 1, np.array([width, height]) - radius - 1
        centers = low + rng.uniform(0, 1, (num_instances, 2)) * np.maximum(high - low, 0)
        self.boxes = torch.from_numpy(np.concatenate([centers - radius, centers + radius], 1)).float()
        self.classes = torch.from_numpy(rng.integers(0, num_classes, num_instances))
        angles = np.linspace(0, 2 * np.pi, POLYGON_POINTS, endpoint=False)
        outline = np.stack([np.cos(angles), np.sin(angles)], 1)
        self.polygons = [[(c + r * outline).reshape(-1)] for c, r in zip(centers, radius)]
        ys, xs = np.mgrid[0:height, 0:width] + 0.5
        self.masks = torch.from_numpy(np.stack([
            ((xs - c[0]) / r[0]) ** 2 + ((ys - c[1]) / r[1]) ** 2 <= 1 for c, r in zip(centers, radius)]))
        corners = self.boxes.numpy()[:, None, :2]
        extent = (self.boxes.numpy()[:, None, 2:] - corners)
        points = corners + rng.uniform(0.2, 0.8, (num_instances, num_keypoints, 2)) * extent
        self.keypoints = torch.from_numpy(np.concatenate(
            [points, np.full((num_instances, num_keypoints, 1), 2.0)], 2)).float()
        sem_seg = torch.zeros(height, width, dtype=torch.int64)
        for mask, category in zip(self.masks, self.classes):
            sem_seg[mask] = 1 + int(category) % (num_sem_seg_classes - 1)
        self.sem_seg = sem_seg


def scenes_for(cfg: CfgNode, size: Tuple[int, int], count: int, seed: int = 0) -> List[Scene]:
    """`count` scenes of `size` (H, W) with the class / keypoint counts of `cfg`."""
    num_classes = cfg.MODEL.RETINANET.NUM_CLASSES if cfg.MODEL.META_ARCHITECTURE == "RetinaNet" \
        else cfg.MODEL.ROI_HEADS.NUM_CLASSES
    return [Scene(*size, num_classes=num_classes, seed=seed + i,
                  num_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS,
                  num_sem_seg_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES) for i in range(count)]


def detzoo_inputs(cfg: CfgNode, scenes: Sequence[Scene], training: bool, seed: int = 0) -> List[Dict]:
    """The model's list of per-image dicts, as DatasetMapper would produce them for `cfg`:
    "image" (and "height"/"width" = its own size), in training "instances" (gt_boxes,
    gt_classes, gt_masks, gt_keypoints as the config needs) and "sem_seg", and "proposals"
    when the config loads precomputed ones."""
    inputs = []
    for i, scene in enumerate(scenes):
        height, width = scene.image.shape[1:]
        entry = {"image": scene.image, "height": height, "width": width}
        if training:
            entry["instances"] = _gt_instances(cfg, scene)
            entry["sem_seg"] = scene.sem_seg
        if cfg.MODEL.LOAD_PROPOSALS:
            topk = cfg.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN if training else cfg.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST
            entry["proposals"] = _proposals(scene, topk, seed + i)
        inputs.append(entry)
    return inputs


def _gt_instances(cfg: CfgNode, scene: Scene) -> Instances:
    instances = Instances(tuple(scene.image.shape[1:]))
    instances.gt_boxes = Boxes(scene.boxes.clone())
    instances.gt_classes = scene.classes.clone()
    if cfg.MODEL.MASK_ON:
        instances.gt_masks = BitMasks(scene.masks) if cfg.INPUT.MASK_FORMAT == "bitmask" \
            else PolygonMasks(scene.polygons)
    if cfg.MODEL.KEYPOINT_ON:
        instances.gt_keypoints = Keypoints(scene.keypoints.clone())
    return instances


def _proposals(scene: Scene, count: int, seed: int) -> Instances:
    """`count` proposals: jittered copies of the ground truth and random boxes, scored."""
    gen = torch.Generator().manual_seed(seed)
    height, width = scene.image.shape[1:]
    jittered = scene.boxes.repeat(count // (2 * len(scene.boxes)) + 1, 1)
    jittered = jittered + torch.randn(jittered.shape, generator=gen) * 8
    corner = torch.rand(count, 2, generator=gen) * torch.tensor([width * 0.9, height * 0.9])
    extent = 16 + torch.rand(count, 2, generator=gen) * torch.tensor([width / 3, height / 3])
    boxes = torch.cat([jittered, torch.cat([corner, corner + extent], 1)])[:count]
    boxes = Boxes(boxes)
    boxes.clip((height, width))
    proposals = Instances((height, width))
    proposals.proposal_boxes = boxes
    proposals.objectness_logits = torch.randn(count, generator=gen).sort(descending=True).values
    return proposals


# ----------------------------------------------------------------------------- timing
def median_time(fn: Callable[[], object], repeat: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` in seconds over `repeat` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    gc.collect()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sgd(model: torch.nn.Module, lr: float = LEARNING_RATE) -> torch.optim.Optimizer:
    """Plain SGD (momentum 0.9, weight decay 1e-4) over the trainable parameters."""
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9,
                           weight_decay=1e-4)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs, name: str = "model"):
    """A zero-argument callable running one optimizer step on `inputs`; it returns the losses
    and raises FloatingPointError if their sum is not finite."""
    def step() -> Dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        losses = model(inputs)
        total = sum(losses.values())
        if not torch.isfinite(total):
            values = {k: float(v.detach()) for k, v in losses.items()}
            raise FloatingPointError(f"{name}: non-finite training losses {values}")
        total.backward()
        optimizer.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    return step


def inference_step(model: torch.nn.Module, inputs) -> Callable[[], object]:
    def infer():
        with torch.inference_mode():
            return model(inputs)

    return infer


def benchmark_config(config: str, inference_repeat: int = INFERENCE_REPEAT, train_repeat: int = TRAIN_REPEAT,
                     test_size_hw: Optional[Tuple[int, int]] = None,
                     train_size_hw: Optional[Tuple[int, int]] = None) -> Dict[str, float]:
    """{"inference_s_per_im", "train_s_per_iter"} of one config; sizes default to the config's."""
    cfg = load_cfg(config)
    image = detzoo_inputs(cfg, scenes_for(cfg, test_size_hw or test_size(cfg), 1), training=False)
    model = build_random_model(cfg, calibration_inputs=image)
    model.eval()
    inference = median_time(inference_step(model, image), inference_repeat)
    model.train()
    batch = detzoo_inputs(cfg, scenes_for(cfg, train_size_hw or train_size(cfg), IMAGES_PER_BATCH), training=True)
    with EventStorage(0):
        train = median_time(train_step(model, sgd(model), batch, config), train_repeat)
    return {"inference_s_per_im": round(inference, 4), "train_s_per_iter": round(train, 4)}


# ----------------------------------------------------------------------------- results file
def busy_cores(seconds: float = 1.0) -> float:
    """Cores kept busy by all processes over the next `seconds` (from /proc/stat; nan
    elsewhere). Run before a measurement: a busy core beside ours makes 2-thread timings
    several times slower, since OpenMP threads wait for each other."""
    def ticks():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    try:
        total0, idle0 = ticks()
        time.sleep(seconds)
        total1, idle1 = ticks()
    except OSError:
        return float("nan")
    return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / max(total1 - total0, 1))


def merge_results(path: str, results: Dict[str, Dict[str, float]], threads: int,
                  cpu: Optional[str] = None) -> Dict:
    """Write `results` into the JSON file at `path`, keeping its other configs when they were
    measured on the same CPU with the same thread count; return the written document."""
    header = {"cpu": cpu or cpu_summary(), "torch": torch.__version__, "threads": threads,
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}
    merged = {}
    if os.path.isfile(path):
        with open(path) as f:
            previous = json.load(f)
        if (previous.get("cpu"), previous.get("threads")) == (header["cpu"], threads):
            merged = dict(previous.get("results", {}))
        else:
            print(f"{path}: earlier results came from {previous.get('cpu')!r} with {previous.get('threads')} "
                  "threads; dropped", flush=True)
    merged.update(results)
    document = {**header, "results": dict(sorted(merged.items()))}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(document, f, indent=2)
        f.write("\n")
    return document


def run(args, output: str = DEFAULT_OUTPUT) -> int:
    configs = zoo_configs(args.filter)
    if not configs:
        print(f"no zoo config matched {args.filter!r}")
        return 1
    threads = torch.get_num_threads()
    print(f"cores busy before the run: {busy_cores():.2f} (other processes; above ~0.2 the times are inflated)",
          flush=True)
    failed = []
    for config in configs:
        try:
            result = benchmark_config(config)
        except Exception:  # report and go on: one broken config must not lose the others' figures
            failed.append(config)
            print(f"{config}: FAILED\n{traceback.format_exc()}", flush=True)
            continue
        # The VM's speed drifts between days, so every entry keeps when it was measured.
        result["measured"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
        merge_results(output, {config: result}, threads)  # after each config, so an interrupted run keeps its figures
        print(f"{config:<62s} inference {result['inference_s_per_im']:7.3f} s/im   "
              f"train {result['train_s_per_iter']:7.3f} s/iter", flush=True)
    print(f"{len(configs) - len(failed)} of {len(configs)} configs written to {output}"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
