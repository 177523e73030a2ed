"""Loader building (build.py) and the dataset wrappers it uses (common.py)."""
import logging
import pickle
import uuid
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest
import torch
import torch.utils.data as torchdata
from PIL import Image

from detzoo.config import get_cfg
from detzoo.data import (
    AspectRatioGroupedDataset,
    DatasetFromList,
    DatasetMapper,
    MapDataset,
    ToIterableDataset,
    build_batch_data_loader,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
    load_proposals_into_dataset,
    print_instances_class_histogram,
)
from detzoo.data import build as build_module
from detzoo.data import common
from detzoo.data import transforms as T
from detzoo.data.build import trivial_batch_collator, worker_init_reset_seed
from detzoo.data.catalog import DatasetCatalog, MetadataCatalog
from detzoo.data.samplers import InferenceSampler, TrainingSampler
from detzoo.structures import BoxMode


def records(n=6):
    """Records with images of alternating orientation; every third has only a crowd box."""
    out = []
    for i in range(n):
        h, w = (20, 30) if i % 2 == 0 else (30, 20)
        crowd = i % 3 == 2
        out.append({
            "file_name": f"img_{i}.png", "image_id": i, "height": h, "width": w,
            "annotations": [{"bbox": [1, 1, 5, 5], "bbox_mode": BoxMode.XYXY_ABS, "category_id": i % 2,
                             "iscrowd": int(crowd), "keypoints": [2, 2, 2, 3, 3, 2 if i < 2 else 0]}],
        })
    return out


def register(dicts, **metadata):
    name = f"test_build_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: dicts)
    if metadata:
        MetadataCatalog.get(name).set(**metadata)
    return name


@pytest.fixture(scope="module")
def image_records(tmp_path_factory):
    """Eight records whose PNGs exist on disk: 4 landscape, 4 portrait."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    out = []
    for i in range(8):
        h, w = (24, 32) if i % 2 == 0 else (32, 24)
        path = root / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        out.append({"file_name": str(path), "image_id": i, "height": h, "width": w,
                    "annotations": [{"bbox": [2, 2, 12, 12], "bbox_mode": BoxMode.XYXY_ABS, "category_id": i % 3}]})
    return out


# ---------------------------------------------------------------------------- common.py
class TestDatasetFromList:
    def test_serialized_storage_is_one_buffer(self):
        items = [{"id": i, "boxes": np.arange(i, dtype=np.float32), "name": "x" * i} for i in range(50)]
        ds = DatasetFromList(items)
        storage = ds._lst
        assert isinstance(storage, common.NumpySerializedList)
        assert storage._buffer.dtype == np.uint8 and storage._buffer.ndim == 1
        assert storage._addr.dtype == np.int64 and len(storage._addr) == 50
        assert len(ds) == 50
        for i in (0, 17, 49, -1):
            item = ds[i]
            assert item["id"] == items[i]["id"] and item["name"] == items[i]["name"]
            np.testing.assert_array_equal(item["boxes"], items[i]["boxes"])
        ds[3]["name"] = "changed"
        assert ds[3]["name"] == "xxx"  # each read is a fresh object
        with pytest.raises(IndexError, match="50"):
            ds[50]

    def test_pickling_plain_and_through_torch_shared_memory(self):
        ds = DatasetFromList([{"id": i} for i in range(10)])
        for dumped in (pickle.dumps(ds), bytes(ForkingPickler.dumps(ds))):
            clone = pickle.loads(dumped)
            assert [clone[i]["id"] for i in range(10)] == list(range(10))
            assert isinstance(clone._lst._buffer, np.ndarray)

    def test_spawned_loader_workers_read_the_shared_buffer(self):
        # Under `launch` the trainer runs in a spawned process, so its loader workers are
        # spawned too and receive the dataset pickled through shared memory.
        items = [{"id": i, "boxes": np.full((i % 5, 4), i, dtype=np.float32)} for i in range(24)]
        ds = DatasetFromList(items)
        loader = torchdata.DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="spawn")
        for _ in range(2):  # a second epoch pickles the dataset again for new workers
            got = sorted(list(loader), key=lambda d: d["id"])
            assert [d["id"] for d in got] == list(range(24))
            for d, item in zip(got, items):
                np.testing.assert_array_equal(d["boxes"], item["boxes"])
        # the parent now reads from the shared copy
        assert [ds[i]["id"] for i in range(24)] == list(range(24))

    def test_unserialized_copy_semantics_and_custom_method(self):
        items = [{"a": [1]}, {"a": [2]}]
        copied = DatasetFromList(items, copy=True, serialize=False)
        copied[0]["a"].append(5)
        assert items[0]["a"] == [1]
        shared = DatasetFromList(items, copy=False, serialize=False)
        assert shared[1] is items[1]
        assert DatasetFromList(items, serialize=lambda lst: lst[::-1])[0] == {"a": [2]}
        with common.set_default_dataset_from_list_serialize_method(lambda lst: ["default"] * len(lst)):
            assert DatasetFromList(items)[1] == "default"
        assert DatasetFromList(items)[1] == {"a": [2]}
        with pytest.raises(TypeError, match="serialize"):
            DatasetFromList(items, serialize="yes")


class TestMapDataset:
    def test_none_retries_another_index(self, caplog):
        ds = MapDataset(DatasetFromList(list(range(10))), lambda x: None if x < 7 else x * 10)
        with caplog.at_level(logging.WARNING, logger="detzoo.data.common"):
            results = [ds[i] for i in range(10)]
        assert all(r in (70, 80, 90) for r in results)
        assert results[7:] == [70, 80, 90]
        assert "returned None for index" in caplog.text

    def test_all_none_is_an_error(self):
        with pytest.raises(RuntimeError, match="all 4 elements"):
            MapDataset(DatasetFromList(list(range(4))), lambda x: None)[0]

    def test_iterable_dataset_skips_none(self):
        class Numbers(torchdata.IterableDataset):
            def __iter__(self):
                return iter(range(6))

            def __len__(self):
                return 6

        mapped = MapDataset(Numbers(), lambda x: x if x % 2 else None)
        assert isinstance(mapped, torchdata.IterableDataset) and list(mapped) == [1, 3, 5]

    def test_pickles(self):
        ds = pickle.loads(pickle.dumps(MapDataset(DatasetFromList([1, 2]), abs)))
        assert ds[1] == 2


def test_to_iterable_dataset_shards_chunks_per_worker(monkeypatch):
    base = DatasetFromList(list(range(100, 112)))
    ds = ToIterableDataset(base, torchdata.SequentialSampler(range(12)), shard_chunk_size=2)
    assert list(ds) == list(range(100, 112)) and len(ds) == 12
    seen = []
    for worker in range(3):
        info = type("WorkerInfo", (), {"id": worker, "num_workers": 3})()
        monkeypatch.setattr(common.data, "get_worker_info", lambda info=info: info)
        seen.append(list(ds))
    assert seen == [[100, 101, 106, 107], [102, 103, 108, 109], [104, 105, 110, 111]]
    with pytest.raises(TypeError, match="Sampler"):
        ToIterableDataset(base, range(3))


def test_aspect_ratio_grouping():
    sizes = [(3, 2), (2, 3), (2, 3), (3, 2), (2, 2), (5, 1)]
    dicts = [{"width": w, "height": h, "i": i} for i, (w, h) in enumerate(sizes)]
    batches = list(AspectRatioGroupedDataset(dicts, 2))
    assert [[d["i"] for d in b] for b in batches] == [[1, 2], [0, 3]]
    assert list(AspectRatioGroupedDataset(dicts, 2))  # buckets survive and keep filling


# ----------------------------------------------------------------------------- build.py
class TestGetDetectionDatasetDicts:
    def test_filters_and_concatenation(self):
        a = register(records(6), thing_classes=["p", "q"])
        b = register(records(3), thing_classes=["p", "q"])
        assert len(get_detection_dataset_dicts(a, filter_empty=False)) == 6
        assert [d["image_id"] for d in get_detection_dataset_dicts([a, b])] == [0, 1, 3, 4, 0, 1]
        assert [d["image_id"] for d in get_detection_dataset_dicts(a, filter_empty=False, min_keypoints=2)] == [0, 1]

    def test_errors(self):
        with pytest.raises(KeyError, match="not registered"):
            get_detection_dataset_dicts("no_such_dataset_x")
        with pytest.raises(ValueError, match="is empty"):
            get_detection_dataset_dicts(register([]))
        crowd_only = register([r for r in records(6) if r["annotations"][0]["iscrowd"]])
        with pytest.raises(ValueError, match="no usable images"):
            get_detection_dataset_dicts(crowd_only)
        a = register(records(3), thing_classes=["p", "q"])
        b = register(records(3), thing_classes=["p", "z"])
        with pytest.raises(ValueError, match="thing_classes"):
            get_detection_dataset_dicts([a, b])
        assert len(get_detection_dataset_dicts([a, b], check_consistency=False)) == 4
        with pytest.raises(ValueError, match="proposal files"):
            get_detection_dataset_dicts(a, proposal_files=["x.pkl", "y.pkl"])

    def test_class_histogram(self, caplog):
        dicts = records(5) + [{"annotations": [{"category_id": 1}, {"category_id": 1, "iscrowd": 1}]}]
        # a class name of its own, so this message has not been logged before
        names = ["p", f"q_{uuid.uuid4().hex[:6]}"]
        with caplog.at_level(logging.INFO, logger="detzoo.data.build"):
            print_instances_class_histogram(dicts, names)
        # non-crowd instances: records 0 and 4 of class 0; 1, 3 and the extra record's of class 1
        assert "all 2 categories" in caplog.text
        rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
                for line in caplog.text.splitlines() if line.startswith("|")}
        assert rows["p"] == ["p", "2", names[1], "3"] and rows["total"][:2] == ["total", "5"]

    def test_class_histogram_checks_ids(self):
        with pytest.raises(ValueError, match="category_id 1"):
            print_instances_class_histogram(records(4), ["p"])


class TestProposals:
    def write(self, path, content):
        with open(path, "wb") as f:
            pickle.dump(content, f)
        return str(path)

    def test_load_sorts_by_score(self, tmp_path):
        boxes = [np.array([[0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 3, 3]], np.float32), np.zeros((0, 4), np.float32)]
        logits = [np.array([0.1, 0.9, 0.5], np.float32), np.zeros(0, np.float32)]
        path = self.write(tmp_path / "p.pkl", {"indexes": [7, 3], "boxes": boxes, "scores": logits,
                                               "bbox_mode": int(BoxMode.XYWH_ABS)})
        dicts = load_proposals_into_dataset([{"image_id": 3}, {"image_id": "7"}], path)
        np.testing.assert_array_equal(dicts[1]["proposal_objectness_logits"], np.float32([0.9, 0.5, 0.1]))
        np.testing.assert_array_equal(dicts[1]["proposal_boxes"][:, 2], [2, 3, 1])
        assert dicts[1]["proposal_bbox_mode"] == BoxMode.XYWH_ABS and len(dicts[0]["proposal_boxes"]) == 0
        with pytest.raises(KeyError, match="image_id 5"):
            load_proposals_into_dataset([{"image_id": 5}], path)

    def test_proposal_files_from_config(self, tmp_path):
        dicts = records(3)
        boxes = [np.array([[0, 0, 4, 4], [1, 1, 9, 9]], np.float32)] * 3
        logits = [np.array([0.2, 0.8], np.float32)] * 3
        path = self.write(tmp_path / "p.pkl", {"ids": [0, 1, 2], "boxes": boxes, "objectness_logits": logits})
        train, test = register(records(3)), register(dicts)
        cfg = get_cfg()
        cfg.MODEL.LOAD_PROPOSALS = True
        cfg.DATASETS.TRAIN, cfg.DATASETS.PROPOSAL_FILES_TRAIN = (train,), (path,)
        cfg.DATASETS.TEST, cfg.DATASETS.PROPOSAL_FILES_TEST = ("other", test), ("missing.pkl", path)
        args = build_module._train_loader_from_config(cfg)
        assert args["mapper"].proposal_topk == 2000
        assert all(d["proposal_boxes"][0, 2] == 9 for d in args["dataset"])
        args = build_module._test_loader_from_config(cfg, test)
        assert args["mapper"].proposal_topk == 1000 and len(args["dataset"]) == 3
        np.testing.assert_array_equal(args["dataset"][0]["proposal_objectness_logits"], np.float32([0.8, 0.2]))
        with pytest.raises(ValueError, match="not in DATASETS.TEST"):
            build_module._test_loader_from_config(cfg, train)

    def test_refuses_code_in_the_file(self, tmp_path):
        class RunsCode:
            def __reduce__(self):
                return print, ("this must not run",)

        path = self.write(tmp_path / "evil.pkl", {"ids": [1], "boxes": [RunsCode()], "objectness_logits": [0]})
        with pytest.raises(ValueError, match="evil.pkl"):
            load_proposals_into_dataset([{"image_id": 1}], path)


class TestBatchLoader:
    def test_batch_size_per_process(self, monkeypatch):
        ds = DatasetFromList(list(range(40)))
        monkeypatch.setattr(build_module, "get_world_size", lambda: 4)
        batch = next(iter(build_batch_data_loader(ds, TrainingSampler(40, seed=0), 16)))
        assert len(batch) == 4
        monkeypatch.setattr(build_module, "get_world_size", lambda: 3)
        with pytest.raises(ValueError, match=r"IMS_PER_BATCH = 16.*\(3\)"):
            build_batch_data_loader(ds, TrainingSampler(40, seed=0), 16)
        with pytest.raises(ValueError, match="not both"):
            build_batch_data_loader(ds, TrainingSampler(40, seed=0), 16, single_gpu_batch_size=2)

    def test_train_loader_from_arguments_with_grouping(self):
        dicts = [{"width": 3, "height": 2, "i": i} if i % 3 else {"width": 2, "height": 3, "i": i} for i in range(30)]
        loader = build_detection_train_loader(dicts, mapper=lambda d: d, total_batch_size=4,
                                              sampler=TrainingSampler(30, seed=0))
        for batch, _ in zip(loader, range(10)):
            assert len(batch) == 4 and len({d["width"] > d["height"] for d in batch}) == 1
        plain = build_detection_train_loader(dicts, mapper=None, total_batch_size=5, aspect_ratio_grouping=False,
                                             collate_fn=lambda b: [d["i"] for d in b])
        assert all(isinstance(i, int) for i in next(iter(plain)))

    def test_train_loader_from_config_with_workers(self, image_records):
        name = register(image_records, thing_classes=["a", "b", "c"])
        cfg = get_cfg()
        cfg.DATASETS.TRAIN = (name,)
        cfg.SOLVER.IMS_PER_BATCH = 2
        cfg.DATALOADER.NUM_WORKERS = 2
        cfg.INPUT.MIN_SIZE_TRAIN = (16, 48)
        cfg.INPUT.MAX_SIZE_TRAIN = 64
        cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "range"
        loader = build_detection_train_loader(cfg)
        sizes = set()
        for batch, _ in zip(loader, range(12)):
            assert len(batch) == 2 and len({d["width"] > d["height"] for d in batch}) == 1
            for d in batch:
                assert d["image"].shape[0] == 3 and len(d["instances"]) == 1
                sizes.add(min(d["image"].shape[1:]))
        # the two workers draw different sizes (they are seeded differently)
        assert len(sizes) > 2

    def test_sampler_choice_from_config(self, image_records):
        name = register(image_records, thing_classes=["a", "b", "c"])
        cfg = get_cfg()
        cfg.DATASETS.TRAIN = (name,)
        cfg.DATALOADER.SAMPLER_TRAIN = "RepeatFactorTrainingSampler"
        cfg.DATALOADER.REPEAT_THRESHOLD = 0.5
        args = build_module._train_loader_from_config(cfg)
        assert args["total_batch_size"] == 16 and args["num_workers"] == 4
        assert float(args["sampler"]._int_part.sum() + args["sampler"]._frac_part.sum()) > len(image_records)
        cfg.DATALOADER.SAMPLER_TRAIN = "RandomSubsetTrainingSampler"
        with pytest.raises(KeyError, match="RANDOM_SUBSET_RATIO"):
            build_module._train_loader_from_config(cfg)
        cfg.DATALOADER.SAMPLER_TRAIN = "MySampler"
        with pytest.raises(ValueError, match="MySampler"):
            build_module._train_loader_from_config(cfg)

    def test_test_loader_covers_each_image_once(self, image_records):
        name = register(image_records)
        cfg = get_cfg()
        cfg.INPUT.MIN_SIZE_TEST = 16
        cfg.DATALOADER.NUM_WORKERS = 0
        loader = build_detection_test_loader(cfg, name)
        assert isinstance(loader.sampler, InferenceSampler)
        seen = [batch[0]["image_id"] for batch in loader]
        assert seen == list(range(8))
        mapper = DatasetMapper(False, augmentations=[T.NoOpTransform()], image_format="RGB")
        loader = build_detection_test_loader(image_records, mapper=mapper, batch_size=3, num_workers=0)
        assert [len(b) for b in loader] == [3, 3, 2]


def test_collator_and_worker_seed():
    batch = [{"a": 1}, {"b": 2}]
    assert trivial_batch_collator(batch) is batch
    torch.manual_seed(123)
    worker_init_reset_seed(1)
    first = np.random.rand()
    torch.manual_seed(123)
    worker_init_reset_seed(1)
    assert np.random.rand() == first
    worker_init_reset_seed(2)
    assert np.random.rand() != first
