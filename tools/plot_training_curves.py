#!/usr/bin/env python
"""Plot the training curves of a run: losses and evaluation AP against the iteration.

    python tools/plot_training_curves.py output/demo/metrics.json --output output/demo/training_curves.png

Reads the `metrics.json` that the trainer's JSONWriter appends to (one JSON object per line,
each with an "iteration"), and draws two panels in one PNG: every `loss*` scalar and
`total_loss` (log scale) on the left, the evaluation results (keys such as "bbox/AP",
"segm/AP", "keypoints/AP", "panoptic_seg/PQ") on the right. A resumed run appends lines with
iterations seen before; the latest value of an iteration wins.
"""
import argparse
import json
import math
import os
import sys
from collections import defaultdict
from typing import Dict, List, Tuple

# The AP keys drawn, when present (others with a "/AP" suffix are ignored: per-category APs).
_EVAL_KEYS = ("bbox/AP", "bbox/AP50", "segm/AP", "segm/AP50", "keypoints/AP", "panoptic_seg/PQ", "sem_seg/mIoU")

Series = Dict[str, List[Tuple[int, float]]]


def read_metrics(path: str) -> List[dict]:
    """The records of a metrics.json file, with a clear error for a broken line."""
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON object ({e.msg}); expected one per line") from e
            if not isinstance(record, dict) or "iteration" not in record:
                raise ValueError(f"{path}:{number}: expected a JSON object with an 'iteration' key")
            records.append(record)
    return records


def split_series(records: List[dict]) -> Tuple[Series, Series]:
    """(losses, evaluation results): name -> [(iteration, value)] sorted by iteration."""
    latest: Dict[str, Dict[int, float]] = defaultdict(dict)
    for record in records:
        for key, value in record.items():
            if key != "iteration" and isinstance(value, (int, float)) and math.isfinite(value):
                latest[key][int(record["iteration"])] = float(value)
    losses = {k: sorted(v.items()) for k, v in latest.items() if k.startswith("loss") or k == "total_loss"}
    evals = {k: sorted(v.items()) for k, v in latest.items() if k in _EVAL_KEYS}
    return losses, evals


def plot(losses: Series, evals: Series, output: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, points in sorted(losses.items()):
        xs, ys = zip(*points)
        left.plot(xs, ys, label=name, linewidth=2.2 if name == "total_loss" else 1.0)
    left.set_yscale("log")
    left.set_xlabel("iteration")
    left.set_title("training losses")
    left.grid(True, alpha=0.3)
    if losses:
        left.legend(fontsize=8)
    for name, points in sorted(evals.items()):
        xs, ys = zip(*points)
        right.plot(xs, ys, marker="o", label=name)
    right.set_xlabel("iteration")
    right.set_title("evaluation" if evals else "evaluation (none in this run)")
    right.set_ylim(0, 100)
    right.grid(True, alpha=0.3)
    if evals:
        right.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics", help="metrics.json written by the trainer")
    parser.add_argument("--output", help="PNG to write (default: training_curves.png beside metrics.json)")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.metrics):
        print(f"error: {args.metrics} does not exist (train with an OUTPUT_DIR first)", file=sys.stderr)
        return 1
    losses, evals = split_series(read_metrics(args.metrics))
    if not losses and not evals:
        print(f"error: {args.metrics} holds no losses and no evaluation results", file=sys.stderr)
        return 1
    output = args.output or os.path.join(os.path.dirname(args.metrics), "training_curves.png")
    plot(losses, evals, output, args.title)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
