#!/usr/bin/env python
"""Write MODEL_ZOO.md: every model-zoo config, the accuracy Detectron2 published for its
checkpoint, and our CPU timings.

    python tools/bench/zoo_table.py [--json benchmarks/zoo_cpu.json] [--output MODEL_ZOO.md] [--check]

Three sources, never mixed up:
* the configs and checkpoint URLs: detzoo.model_zoo (the packaged YAMLs, the URL table);
* published accuracy (box / mask / keypoint AP, PQ, proposal AR): PUBLISHED below, as printed
  in Detectron2's MODEL_ZOO.md (and configs/Detectron1-Comparisons/README.md) for the same
  checkpoints. They are Detectron2's numbers, not measured here;
* CPU seconds: the JSON written by `python tools/benchmark.py --task zoo` (tools/bench/zoo.py).
  A config missing from it shows "–"; no figure is ever filled in by hand.

Every zoo config except Base-* and quick_schedules/ must appear in exactly one table: the
script stops with an error naming the configs it would otherwise leave out.
"""
import argparse
import json
import os
import re
import sys
from typing import Dict, List, NamedTuple, Optional, Sequence

from detzoo import model_zoo

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_JSON = os.path.join(REPO, "benchmarks", "zoo_cpu.json")
DEFAULT_OUTPUT = os.path.join(REPO, "MODEL_ZOO.md")
CONFIG_LINK_ROOT = "detzoo/model_zoo/configs"  # relative to MODEL_ZOO.md at the repository root
MISSING = "–"

# Accuracy Detectron2 published for the checkpoint of each config (COCO val2017 unless the
# section says otherwise). Keys: box = box AP, mask = mask AP, kp = keypoint AP, pq = PQ,
# ar = RPN proposal AR@1000, ap50 = box AP50.
PUBLISHED: Dict[str, Dict[str, float]] = {
    "COCO-Detection/faster_rcnn_R_50_C4_1x": {"box": 35.7},
    "COCO-Detection/faster_rcnn_R_50_DC5_1x": {"box": 37.3},
    "COCO-Detection/faster_rcnn_R_50_FPN_1x": {"box": 37.9},
    "COCO-Detection/faster_rcnn_R_50_C4_3x": {"box": 38.4},
    "COCO-Detection/faster_rcnn_R_50_DC5_3x": {"box": 39.0},
    "COCO-Detection/faster_rcnn_R_50_FPN_3x": {"box": 40.2},
    "COCO-Detection/faster_rcnn_R_101_C4_3x": {"box": 41.1},
    "COCO-Detection/faster_rcnn_R_101_DC5_3x": {"box": 40.6},
    "COCO-Detection/faster_rcnn_R_101_FPN_3x": {"box": 42.0},
    "COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x": {"box": 43.0},
    "COCO-Detection/retinanet_R_50_FPN_1x": {"box": 37.4},
    "COCO-Detection/retinanet_R_50_FPN_3x": {"box": 38.7},
    "COCO-Detection/retinanet_R_101_FPN_3x": {"box": 40.4},
    "COCO-Detection/rpn_R_50_C4_1x": {"ar": 51.6},
    "COCO-Detection/rpn_R_50_FPN_1x": {"ar": 58.0},
    "COCO-Detection/fast_rcnn_R_50_FPN_1x": {"box": 37.8},
    "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x": {"box": 36.8, "mask": 32.2},
    "COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_1x": {"box": 38.3, "mask": 34.2},
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x": {"box": 38.6, "mask": 35.2},
    "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_3x": {"box": 39.8, "mask": 34.4},
    "COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_3x": {"box": 40.0, "mask": 35.9},
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x": {"box": 41.0, "mask": 37.2},
    "COCO-InstanceSegmentation/mask_rcnn_R_101_C4_3x": {"box": 42.6, "mask": 36.7},
    "COCO-InstanceSegmentation/mask_rcnn_R_101_DC5_3x": {"box": 41.9, "mask": 37.3},
    "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x": {"box": 42.9, "mask": 38.6},
    "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x": {"box": 44.3, "mask": 39.5},
    "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x": {"box": 53.6, "kp": 64.0},
    "COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x": {"box": 55.4, "kp": 65.5},
    "COCO-Keypoints/keypoint_rcnn_R_101_FPN_3x": {"box": 56.4, "kp": 66.1},
    "COCO-Keypoints/keypoint_rcnn_X_101_32x8d_FPN_3x": {"box": 57.3, "kp": 66.0},
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x": {"box": 37.6, "mask": 34.7, "pq": 39.4},
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_3x": {"box": 40.0, "mask": 36.5, "pq": 41.5},
    "COCO-PanopticSegmentation/panoptic_fpn_R_101_3x": {"box": 42.4, "mask": 38.5, "pq": 43.0},
    "LVISv0.5-InstanceSegmentation/mask_rcnn_R_50_FPN_1x": {"box": 23.6, "mask": 24.4},
    "LVISv0.5-InstanceSegmentation/mask_rcnn_R_101_FPN_1x": {"box": 25.6, "mask": 25.9},
    "LVISv0.5-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_1x": {"box": 26.7, "mask": 27.1},
    "Cityscapes/mask_rcnn_R_50_FPN": {"mask": 36.5},
    "PascalVOC-Detection/faster_rcnn_R_50_C4": {"box": 51.9, "ap50": 80.3},
    "Misc/mask_rcnn_R_50_FPN_1x_dconv_c3-c5": {"box": 41.5, "mask": 37.5},
    "Misc/mask_rcnn_R_50_FPN_3x_dconv_c3-c5": {"box": 42.7, "mask": 38.5},
    "Misc/cascade_mask_rcnn_R_50_FPN_1x": {"box": 42.1, "mask": 36.4},
    "Misc/cascade_mask_rcnn_R_50_FPN_3x": {"box": 44.3, "mask": 38.5},
    "Misc/mask_rcnn_R_50_FPN_3x_gn": {"box": 42.6, "mask": 38.6},
    "Misc/mask_rcnn_R_50_FPN_3x_syncbn": {"box": 41.9, "mask": 37.8},
    "Misc/scratch_mask_rcnn_R_50_FPN_3x_gn": {"box": 39.9, "mask": 36.6},
    "Misc/scratch_mask_rcnn_R_50_FPN_9x_gn": {"box": 43.7, "mask": 39.6},
    "Misc/scratch_mask_rcnn_R_50_FPN_9x_syncbn": {"box": 43.6, "mask": 39.3},
    "Misc/panoptic_fpn_R_101_dconv_cascade_gn_3x": {"box": 47.4, "mask": 41.3, "pq": 46.1},
    "Misc/cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv": {"box": 50.2, "mask": 44.0},
    "Detectron1-Comparisons/faster_rcnn_R_50_FPN_noaug_1x": {"box": 36.9},
    "Detectron1-Comparisons/mask_rcnn_R_50_FPN_noaug_1x": {"box": 37.8, "mask": 34.9},
    "Detectron1-Comparisons/keypoint_rcnn_R_50_FPN_1x": {"box": 53.1, "kp": 64.2},
}

METRIC_HEADERS = {"box": "box AP", "mask": "mask AP", "kp": "kp. AP", "pq": "PQ", "ar": "prop. AR",
                  "ap50": "box AP50"}


class Section(NamedTuple):
    title: str
    note: str
    configs: Sequence[str]  # names without ".yaml", in table order
    metrics: Sequence[str]  # keys of PUBLISHED entries shown as columns


def _names(folder: str, *stems: str) -> List[str]:
    return [f"{folder}/{stem}" for stem in stems]


SECTIONS = [
    Section("COCO object detection: Faster R-CNN", "",
            _names("COCO-Detection", "faster_rcnn_R_50_C4_1x", "faster_rcnn_R_50_DC5_1x",
                   "faster_rcnn_R_50_FPN_1x", "faster_rcnn_R_50_C4_3x", "faster_rcnn_R_50_DC5_3x",
                   "faster_rcnn_R_50_FPN_3x", "faster_rcnn_R_101_C4_3x", "faster_rcnn_R_101_DC5_3x",
                   "faster_rcnn_R_101_FPN_3x", "faster_rcnn_X_101_32x8d_FPN_3x"), ["box"]),
    Section("COCO object detection: RetinaNet", "",
            _names("COCO-Detection", "retinanet_R_50_FPN_1x", "retinanet_R_50_FPN_3x",
                   "retinanet_R_101_FPN_3x"), ["box"]),
    Section("COCO object detection: RPN and Fast R-CNN",
            "Fast R-CNN reads precomputed proposals (DATASETS.PROPOSAL_FILES_*).",
            _names("COCO-Detection", "rpn_R_50_C4_1x", "rpn_R_50_FPN_1x", "fast_rcnn_R_50_FPN_1x"),
            ["box", "ar"]),
    Section("COCO instance segmentation: Mask R-CNN", "",
            _names("COCO-InstanceSegmentation", "mask_rcnn_R_50_C4_1x", "mask_rcnn_R_50_DC5_1x",
                   "mask_rcnn_R_50_FPN_1x", "mask_rcnn_R_50_FPN_1x_giou", "mask_rcnn_R_50_C4_3x",
                   "mask_rcnn_R_50_DC5_3x", "mask_rcnn_R_50_FPN_3x", "mask_rcnn_R_101_C4_3x",
                   "mask_rcnn_R_101_DC5_3x", "mask_rcnn_R_101_FPN_3x", "mask_rcnn_X_101_32x8d_FPN_3x"),
            ["box", "mask"]),
    Section("COCO person keypoints: Keypoint R-CNN", "",
            _names("COCO-Keypoints", "keypoint_rcnn_R_50_FPN_1x", "keypoint_rcnn_R_50_FPN_3x",
                   "keypoint_rcnn_R_101_FPN_3x", "keypoint_rcnn_X_101_32x8d_FPN_3x"), ["box", "kp"]),
    Section("COCO panoptic segmentation: Panoptic FPN", "",
            _names("COCO-PanopticSegmentation", "panoptic_fpn_R_50_1x", "panoptic_fpn_R_50_3x",
                   "panoptic_fpn_R_101_3x"), ["box", "mask", "pq"]),
    Section("LVIS instance segmentation: Mask R-CNN",
            "LVIS v0.5 val. The 1x schedule has as many iterations as COCO's 1x (about 24 LVIS v0.5 "
            "epochs); Detectron2 notes a large run-to-run variance. No LVIS v1 checkpoint was published.",
            _names("LVISv0.5-InstanceSegmentation", "mask_rcnn_R_50_FPN_1x", "mask_rcnn_R_101_FPN_1x",
                   "mask_rcnn_X_101_32x8d_FPN_1x")
            + _names("LVISv1-InstanceSegmentation", "mask_rcnn_R_50_FPN_1x", "mask_rcnn_R_101_FPN_1x",
                     "mask_rcnn_X_101_32x8d_FPN_1x"), ["box", "mask"]),
    Section("Cityscapes instance segmentation",
            "Mask R-CNN initialised from COCO, trained on the fine annotations only; Cityscapes val.",
            ["Cityscapes/mask_rcnn_R_50_FPN"], ["box", "mask"]),
    Section("Pascal VOC detection",
            "Trained on VOC 2007+2012 trainval, tested on VOC 2007 test (11-point AP).",
            _names("PascalVOC-Detection", "faster_rcnn_R_50_C4", "faster_rcnn_R_50_FPN"), ["box", "ap50"]),
    Section("Other settings",
            "Deformable convolution, Cascade R-CNN, GroupNorm / SyncBN and training from scratch, "
            "a class-agnostic box head, semantic FPN, and two large models trained on several "
            "machines. The X152 checkpoint is the one saved after 40k of its 50k iterations "
            "(model_0039999); with test-time augmentation Detectron2 published 51.9 box AP / 45.9 "
            "mask AP for it.",
            _names("Misc", "mask_rcnn_R_50_FPN_1x_dconv_c3-c5", "mask_rcnn_R_50_FPN_3x_dconv_c3-c5",
                   "cascade_mask_rcnn_R_50_FPN_1x", "cascade_mask_rcnn_R_50_FPN_3x",
                   "mask_rcnn_R_50_FPN_3x_gn", "mask_rcnn_R_50_FPN_3x_syncbn",
                   "scratch_mask_rcnn_R_50_FPN_3x_gn", "scratch_mask_rcnn_R_50_FPN_9x_gn",
                   "scratch_mask_rcnn_R_50_FPN_9x_syncbn", "mask_rcnn_R_50_FPN_1x_cls_agnostic",
                   "semantic_R_50_FPN_1x", "panoptic_fpn_R_101_dconv_cascade_gn_3x",
                   "cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv"), ["box", "mask", "pq"]),
    Section("Detectron1 comparisons",
            "Detectron's settings (no scale augmentation, smooth L1, ROIAlign sampling ratio 2, "
            "...), for comparing accuracy with Detectron.",
            _names("Detectron1-Comparisons", "faster_rcnn_R_50_FPN_noaug_1x", "mask_rcnn_R_50_FPN_noaug_1x",
                   "keypoint_rcnn_R_50_FPN_1x"), ["box", "mask", "kp"]),
]


# ----------------------------------------------------------------------------- inputs
def load_measurements(path: str) -> Optional[dict]:
    """The benchmark JSON at `path`, or None if there is none."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        document = json.load(f)
    if not isinstance(document.get("results"), dict):
        raise ValueError(f"{path}: expected a 'results' object mapping config names to timings")
    return document


def check_coverage(zoo_configs: Sequence[str]) -> None:
    """Every model config appears in exactly one table, every table row is a zoo config, and the
    configs with published figures are exactly those with a published checkpoint."""
    models = {c[: -len(".yaml")] for c in zoo_configs
              if not c.rsplit("/", 1)[-1].startswith("Base-") and not c.startswith("quick_schedules/")}
    shown = [c for section in SECTIONS for c in section.configs]
    with_checkpoint = {c for c in shown if checkpoint_url(c) is not None}
    problems = []
    if models - set(shown):
        problems.append(f"configs in no table: {sorted(models - set(shown))}")
    if set(shown) - models:
        problems.append(f"table rows that are not zoo configs: {sorted(set(shown) - models)}")
    if len(shown) != len(set(shown)):
        problems.append(f"configs in several tables: {sorted({c for c in shown if shown.count(c) > 1})}")
    if set(PUBLISHED) - with_checkpoint:
        problems.append(f"published figures without a checkpoint: {sorted(set(PUBLISHED) - with_checkpoint)}")
    if with_checkpoint - set(PUBLISHED):
        problems.append(f"checkpoints without published figures: {sorted(with_checkpoint - set(PUBLISHED))}")
    if problems:
        raise SystemExit("zoo_table.py: " + "; ".join(problems))


# ----------------------------------------------------------------------------- formatting
def lr_schedule(name: str) -> str:
    """"1x" / "3x" / "9x" from the config name; else the iteration count of the config."""
    match = re.search(r"_(\d+)x(_|$)", name)
    if match:
        return f"{match.group(1)}x"
    max_iter = model_zoo.get_config(f"{name}.yaml").SOLVER.MAX_ITER
    return f"{max_iter // 1000}k iter" if max_iter % 1000 == 0 else f"{max_iter} iter"


def seconds(value: Optional[float]) -> str:
    """3 significant digits (0.412, 1.23, 12.3); "–" when not measured."""
    if value is None:
        return MISSING
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def checkpoint_url(name: str) -> Optional[str]:
    """The published checkpoint of config `name`, or None when Detectron2 released none."""
    try:
        return model_zoo.get_checkpoint_url(f"{name}.yaml")
    except RuntimeError:
        return None


def checkpoint_cells(name: str) -> List[str]:
    url = checkpoint_url(name)
    if url is None:
        return [MISSING, "not published"]
    model_id, file_name = url.rsplit("/", 2)[1:]
    return [model_id, f"[{file_name}]({url})"]


def table(section: Section, results: Dict[str, dict]) -> List[str]:
    header = (["config", "lr sched"] + [f"{METRIC_HEADERS[m]} (D2)" for m in section.metrics]
              + ["model id", "download", "CPU inference (s/im)", "CPU train (s/iter)", "CPU measured (UTC)"])
    align = [":--", ":-:"] + ["--:"] * len(section.metrics) + ["--:", ":--", "--:", "--:", ":-:"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    several_folders = len({name.split("/")[0] for name in section.configs}) > 1
    for name in section.configs:
        published = PUBLISHED.get(name, {})
        measured = results.get(f"{name}.yaml", {})
        label = name if several_folders else name.rsplit("/", 1)[-1]
        cells = ([f"[{label}]({CONFIG_LINK_ROOT}/{name}.yaml)", lr_schedule(name)]
                 + [f"{published[m]:.1f}" if m in published else MISSING for m in section.metrics]
                 + checkpoint_cells(name)
                 + [seconds(measured.get("inference_s_per_im")), seconds(measured.get("train_s_per_iter")),
                    measured.get("measured", MISSING)])
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def measured_line(measurements: Optional[dict], json_path: str) -> str:
    shown = os.path.relpath(json_path, REPO)
    if measurements is None:
        return (f"No CPU figures yet: `{shown}` does not exist, so every CPU cell shows {MISSING}. "
                "Run the two commands above to fill them in.")
    times = sorted(entry["measured"] for entry in measurements["results"].values() if "measured" in entry)
    if times:
        when = f", measured {times[0]} to {times[-1]} UTC"
    else:
        when = f", measured {measurements['date']}" if measurements.get("date") else ""
    return (f"CPU figures: **{measurements.get('cpu', 'unknown CPU')}**, "
            f"{measurements.get('threads', '?')} threads, torch {measurements.get('torch', '?')}" + when
            + f" (`{shown}`, {len(measurements['results'])} configs measured; {MISSING} = not measured).")


def render(measurements: Optional[dict], json_path: str) -> str:
    results = measurements["results"] if measurements else {}
    lines = [
        "# detzoo Model Zoo",
        "",
        "<!-- Generated file: edit tools/bench/zoo_table.py, not this file. -->",
        "Regenerate this file with:",
        "",
        "```bash",
        "python tools/benchmark.py --task zoo --threads 2   # CPU timings -> benchmarks/zoo_cpu.json",
        "python tools/bench/zoo_table.py                    # benchmarks/zoo_cpu.json -> MODEL_ZOO.md",
        "```",
        "",
        measured_line(measurements, json_path),
        "",
        "Every config of Detectron2's model zoo ships with detzoo (`detzoo/model_zoo/configs/`), and",
        "detzoo loads the checkpoints Detectron2 trained from them:",
        "",
        "```python",
        "from detzoo import model_zoo",
        "",
        'cfg = model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml", trained=True)',
        'model = model_zoo.get("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml", trained=True)',
        "```",
        "",
        "Checkpoints are downloaded once into `$DETZOO_CACHE` (default `~/.torch/detzoo_cache`) and",
        "checked against the md5 prefix in their file names. On a machine without network access,",
        "download the file elsewhere and put it at the cache path the error message names.",
        "",
        "## How to read the tables",
        "",
        "* **config** links to the YAML file; **lr sched** is Detectron2's schedule name (1x is about",
        "  12 COCO epochs, 3x about 37) or the config's iteration count.",
        "* Columns marked **(D2)** are the accuracy **published by Detectron2 for this checkpoint**",
        "  (its MODEL_ZOO.md; COCO val2017 unless a section says otherwise). They were not re-measured",
        f"  here. {MISSING} means Detectron2 published no such figure.",
        "* **model id** and **download** name Detectron2's published checkpoint; the hex digits in the",
        '  file name begin its md5. "not published" means Detectron2 released no trained weights for',
        "  that config (`model_zoo.get_checkpoint_url` raises an error for it).",
        "* **CPU inference / CPU train** are measured by detzoo (`tools/bench/zoo.py`) on the CPU named",
        "  above, randomly initialised weights: inference is one image at the test size (short side",
        "  INPUT.MIN_SIZE_TEST, 4:3), post-processing included; training is one SGD step on a batch of",
        "  2 images at the largest training size. They compare models on one machine; they are not",
        "  Detectron2's GPU figures. **CPU measured** says when: the machine is a virtual machine",
        "  whose speed drifts between days by a third or more (see faster_rcnn_R_50_C4_1x and _3x,",
        "  the same network measured on two days), so compare rows measured close in time.",
    ]
    for section in SECTIONS:
        lines += ["", f"## {section.title}", ""]
        if section.note:
            lines += [section.note, ""]
        lines += table(section, results)
    lines += ["", "Not listed: the `Base-*.yaml` files (bases of the others) and `quick_schedules/`",
              "(short test runs, including detzoo's own `quick_schedules/detzoo/*_shapes.yaml`).", ""]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=DEFAULT_JSON,
                        help="benchmark results of tools/benchmark.py --task zoo (used if present)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if --output differs from what would be written")
    args = parser.parse_args(argv)
    check_coverage(model_zoo.list_configs())
    measurements = load_measurements(args.json)
    unknown = sorted(set(measurements["results"]) - set(model_zoo.list_configs())) if measurements else []
    if unknown:
        print(f"{args.json}: ignoring results for configs not in the zoo: {', '.join(unknown)}")
    text = render(measurements, args.json)
    if args.check:
        current = open(args.output, encoding="utf-8").read() if os.path.isfile(args.output) else ""
        if current != text:
            print(f"{args.output} is out of date: run python tools/bench/zoo_table.py")
            return 1
        return 0
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
