#!/usr/bin/env python
"""Memory of data-loader workers reading a large list of dataset dicts.

    python tools/bench/data_memory.py [--records 100000] [--workers 2]

Builds `--records` COCO-like dataset dicts (4 instances each, with 16-point polygons), wraps
them in DatasetFromList with serialize=True (one numpy buffer) and serialize=False (the Python
list), and lets `--workers` forked DataLoader workers each read and deep-copy their share of
the records, as DatasetMapper does. Each worker reports its memory before and after the pass
(from /proc/self/smaps_rollup, Linux only):

    RSS  resident pages, shared ones included (fork maps the whole parent, so this starts high)
    PSS  resident pages with shared ones divided among the processes sharing them
    USS  pages private to the worker: what it really costs; growth here is copy-on-read
"""
import argparse
import copy
import gc
import os
import sys
import time

import numpy as np
import torch.utils.data as torchdata

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from detzoo.data.common import DatasetFromList  # noqa: E402

MIB = 1024 * 1024


def memory_mib():
    """RSS, PSS, USS of this process in MiB."""
    values = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                values[parts[0][:-1]] = int(parts[1]) * 1024
    uss = values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)
    return values["Rss"] / MIB, values["Pss"] / MIB, uss / MIB


def make_records(num_records, seed=0):
    rng = np.random.default_rng(seed)
    records = []
    for i in range(num_records):
        annotations = []
        for j in range(4):
            x, y = (float(v) for v in rng.uniform(0, 400, 2))
            polygon = [float(v) for v in rng.uniform(0, 200, 32)]
            annotations.append({"id": i * 4 + j, "bbox": [x, y, 50.0, 60.0], "bbox_mode": 1, "iscrowd": 0,
                                "category_id": int(rng.integers(80)), "area": 3000.0, "segmentation": [polygon]})
        records.append({"file_name": f"/datasets/coco/train2017/{i:012d}.jpg", "image_id": i,
                        "height": 480, "width": 640, "annotations": annotations})
    return records


class _Probe(torchdata.IterableDataset):
    """In each worker: read and deep-copy this worker's share of the records, report memory."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __iter__(self):
        info = torchdata.get_worker_info()
        before = memory_mib()
        start = time.perf_counter()
        for i in range(info.id, len(self.dataset), info.num_workers):
            copy.deepcopy(self.dataset[i])
        seconds = time.perf_counter() - start
        gc.collect()  # a full collection visits every container object, as one will during training
        yield {"worker": info.id, "before": before, "after": memory_mib(), "seconds": seconds}


def measure(dataset, num_workers):
    loader = torchdata.DataLoader(_Probe(dataset), batch_size=None, num_workers=num_workers)
    return sorted(loader, key=lambda r: r["worker"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    print(f"building {args.records} dataset dicts ...", flush=True)
    records = make_records(args.records)
    gc.collect()
    print(f"main process holding the list: RSS {memory_mib()[0]:.0f} MiB", flush=True)

    report("serialize=False (the Python list)", DatasetFromList(records, copy=False, serialize=False), args.workers)
    dataset = DatasetFromList(records, copy=False, serialize=True)
    print(f"serialized: buffer {dataset._lst._buffer.nbytes / MIB:.1f} MiB + addresses "
          f"{dataset._lst._addr.nbytes / MIB:.1f} MiB", flush=True)
    # as in build_detection_train_loader, nothing else keeps the list once it is serialized
    del records
    gc.collect()
    report("serialize=True (one numpy buffer)", dataset, args.workers)


def report(title, dataset, num_workers):
    print(f"{title}: main process RSS {memory_mib()[0]:.0f} MiB", flush=True)
    for r in measure(dataset, num_workers):
        (rss0, pss0, uss0), (rss1, pss1, uss1) = r["before"], r["after"]
        print(f"  worker {r['worker']}: RSS {rss0:6.0f} -> {rss1:6.0f} MiB   PSS {pss0:6.0f} -> {pss1:6.0f} MiB   "
              f"USS {uss0:6.0f} -> {uss1:6.0f} MiB   ({r['seconds']:.1f} s to read its share)", flush=True)


if __name__ == "__main__":
    main()
