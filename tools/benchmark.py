#!/usr/bin/env python
"""detzoo benchmarks: each task times detzoo against a peer measured in the same run.

    python tools/benchmark.py --task ops [--filter roi_align] [--threads 2] [--repeat 5]

Every run first prints the CPU model and its avx512 / amx flags: compare the ratios printed in
one run, never absolute times taken on different machines.

Task `ops`: every module `tools/bench/ops_*.py` provides `cases()`, a list of
`Case(name, ours, peer, peer_name)` (zero-argument callables; inputs built beforehand). Each is
warmed up once, then timed `--repeat` times; the median is reported with the ratio
peer / ours (> 1 means detzoo is faster).

Task `coco-eval`: evaluate() + accumulate() of detzoo's COCOeval_opt and of pycocotools,
faster-coco-eval and hotcoco on a generated COCO-like set (tools/bench/coco_eval.py; `--filter`
picks bbox / segm / keypoints, `--images` the set size).

Task `data`: images/s of the training data loader (tools/bench/data.py: COCO-style
augmentation, 2 workers, generated 640x480 JPEGs); `--repeat` rounds, median reported.

Task `train`: Mask R-CNN R50-FPN training step (forward, backward, SGD) on 2 images and
inference on 1, detzoo against torchvision's MaskRCNN configured alike, both randomly
initialised (tools/bench/train.py; `--size HxW`, default 800x1216; median of `--repeat`).

Task `zoo`: CPU inference s/image and train s/iter of every zoo config with random weights
(tools/bench/zoo.py; `--filter` picks configs by substring), merged into benchmarks/zoo_cpu.json.
"""
import argparse
import importlib.util
import os
import statistics
import sys
import time
from collections import namedtuple

import torch

from detzoo.utils.collect_env import cpu_summary

HERE = os.path.dirname(os.path.abspath(__file__))
Case = namedtuple("Case", ["name", "ours", "peer", "peer_name"])


def cpu_report():
    return (f"CPU: {cpu_summary()}; {os.cpu_count()} logical cores; "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def time_fn(fn, repeat):
    fn()  # warm-up (first-call allocation, lazy init)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def load_module(fname):
    """Import tools/bench/<fname> as the module `bench_<name>`."""
    name = "bench_" + fname[:-3]
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, "bench", fname))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_cases(prefix, name_filter):
    bench_dir = os.path.join(HERE, "bench")
    cases = []
    for fname in sorted(os.listdir(bench_dir)):
        if not (fname.startswith(prefix) and fname.endswith(".py")):
            continue
        spec = importlib.util.spec_from_file_location(fname[:-3], os.path.join(bench_dir, fname))
        module = importlib.util.module_from_spec(spec)
        sys.modules[fname[:-3]] = module
        spec.loader.exec_module(module)
        cases += [c for c in module.cases(Case) if name_filter is None or name_filter in c.name]
    return cases


def run_ops(args):
    cases = load_cases("ops_", args.filter)
    if not cases:
        print("no op benchmark matched")
        return 1
    rows = []
    for case in cases:
        with torch.no_grad() if not case.name.endswith("backward") else torch.enable_grad():
            ours = time_fn(case.ours, args.repeat)
            peer = time_fn(case.peer, args.repeat)
        rows.append((case.name, ours, peer, case.peer_name, peer / ours))
        print(f"{case.name:<58s} detzoo {ours * 1e3:9.2f} ms   {case.peer_name} {peer * 1e3:9.2f} ms   "
              f"ratio {peer / ours:5.2f}x", flush=True)
    slower = [r[0] for r in rows if r[4] < 1.0]
    print(f"{len(rows)} cases; detzoo slower than the peer in {len(slower)}" + (f": {', '.join(slower)}" if slower else ""))
    return 0


def run_data(args):
    return load_module("data.py").run(args)


def run_coco_eval(args):
    """COCO evaluation (evaluate + accumulate) against pycocotools, faster-coco-eval, hotcoco."""
    return load_module("coco_eval.py").run(args)


def run_train(args):
    """Mask R-CNN training step and inference against torchvision."""
    return load_module("train.py").run(args)


def run_zoo(args):
    """Every zoo config's CPU inference and training time, into benchmarks/zoo_cpu.json."""
    return load_module("zoo.py").run(args)


TASKS = {"ops": run_ops, "data": run_data, "coco-eval": run_coco_eval, "train": run_train, "zoo": run_zoo}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=sorted(TASKS), required=True)
    ap.add_argument("--filter", help="only cases whose name contains this string")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--images", type=int, default=5000, help="coco-eval: images in the generated set")
    ap.add_argument("--size", help="train: image size HEIGHTxWIDTH (default 800x1216)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(cpu_report(), flush=True)
    return TASKS[args.task](args)


if __name__ == "__main__":
    sys.exit(main())
