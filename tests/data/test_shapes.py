"""The synthetic shapes datasets (datasets/shapes.py): deterministic generation, real formats
read back by the standard loaders and by pycocotools, cache and concurrency behaviour, and the
registered names."""
import json
import os
import threading

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from detzoo.data import catalog as catalog_module
from detzoo.data.catalog import DatasetCatalog, MetadataCatalog
from detzoo.data.datasets import load_coco_json, load_coco_panoptic_json, load_sem_seg, shapes
from detzoo.data.datasets.builtin_meta import COCO_PERSON_KEYPOINT_NAMES
from detzoo.data.datasets.shapes import generate_shapes


def files_of(folder):
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Each kind generated once (small), shared by the read-back tests."""
    root = str(tmp_path_factory.mktemp("shapes"))
    return {kind: generate_shapes(root, kind, "train", num_images=12, seed=5) for kind in shapes.KINDS}


@pytest.mark.parametrize("kind", shapes.KINDS)
def test_generation_is_deterministic(tmp_path, kind):
    first = files_of(generate_shapes(str(tmp_path / "a"), kind, "val", num_images=3))
    second = files_of(generate_shapes(str(tmp_path / "b"), kind, "val", num_images=3))
    assert first.keys() == second.keys() and len(first) > 3
    assert all(first[k] == second[k] for k in first)  # same bytes
    other = files_of(generate_shapes(str(tmp_path / "c"), kind, "val", num_images=3, seed=99))
    assert other["images/000001.jpg"] != first["images/000001.jpg"]


def test_instances_read_back(generated):
    folder = generated["instances"]
    json_file = os.path.join(folder, "instances.json")
    records = load_coco_json(json_file, os.path.join(folder, "images"), "shapes_test_instances")
    coco = COCO(json_file)
    meta = MetadataCatalog.get("shapes_test_instances")
    assert meta.thing_classes == ["circle", "triangle", "square"]
    assert len(records) == 12 and sum(len(r["annotations"]) for r in records) == len(coco.anns)
    for record in records:
        assert 256 <= record["height"] <= 384 and 256 <= record["width"] <= 384
        assert record["annotations"] and os.path.isfile(record["file_name"])
        image = Image.open(record["file_name"])
        assert image.size == (record["width"], record["height"]) and image.mode == "RGB"
        for annotation, source in zip(record["annotations"], coco.imgToAnns[record["image_id"]]):
            x, y, w, h = annotation["bbox"]
            assert w > 0 and h > 0 and x >= -0.5 and y >= -0.5
            assert x + w <= record["width"] + 0.5 and y + h <= record["height"] + 0.5
            assert annotation["category_id"] in (0, 1, 2)
            # the annotated area is the visible pixels; its polygon covers them
            drawn = coco.annToMask(source)
            assert abs(int(drawn.sum()) - source["area"]) <= 0.2 * source["area"] + 8


def test_keypoints_read_back(generated):
    folder = generated["keypoints"]
    json_file = os.path.join(folder, "person_keypoints.json")
    coco = COCO(json_file)
    assert coco.loadCats(1)[0]["keypoints"] == list(COCO_PERSON_KEYPOINT_NAMES)
    records = load_coco_json(json_file, os.path.join(folder, "images"), "shapes_test_keypoints")
    for record in records:
        assert record["annotations"]
        for annotation, source in zip(record["annotations"], coco.imgToAnns[record["image_id"]]):
            keypoints = np.array(annotation["keypoints"]).reshape(17, 3)
            assert set(keypoints[:, 2]) <= {0, 1, 2} and source["num_keypoints"] == (keypoints[:, 2] > 0).sum() >= 3
            labelled = keypoints[keypoints[:, 2] > 0]
            assert (labelled[:, 0] > 0).all() and (labelled[:, 0] < record["width"]).all()
            assert (labelled[:, 1] > 0).all() and (labelled[:, 1] < record["height"]).all()
            assert (keypoints[keypoints[:, 2] == 0, :2] == 0.5).all()  # COCO's (0, 0) for unlabelled
            # the figure faces the camera: its left side is on the image's right
            left, right = (COCO_PERSON_KEYPOINT_NAMES.index(k) for k in ("left_shoulder", "right_shoulder"))
            if keypoints[left, 2] and keypoints[right, 2]:
                assert keypoints[left, 0] > keypoints[right, 0]


def decode_panoptic(path):
    png = np.asarray(Image.open(path), dtype=np.int64)
    return png[..., 0] + 256 * png[..., 1] + 65536 * png[..., 2]


def test_panoptic_and_semantic_read_back(generated):
    folder = generated["panoptic"]
    images = os.path.join(folder, "images")
    records = load_coco_panoptic_json(os.path.join(folder, "panoptic.json"), images, os.path.join(folder, "panoptic"),
                                      shapes._panoptic_standard_metadata())
    instances = COCO(os.path.join(folder, "instances.json"))
    semantic = {r["file_name"]: r["sem_seg_file_name"] for r in load_sem_seg(os.path.join(folder, "sem_seg"), images)}
    stuff_only = {r["file_name"]: r["sem_seg_file_name"]
                  for r in load_sem_seg(os.path.join(folder, "panoptic_stuff"), images)}
    for record in records:
        ids = decode_panoptic(record["pan_seg_file_name"])
        assert sorted(np.unique(ids)) == sorted(s["id"] for s in record["segments_info"])  # no void pixels
        labels = np.asarray(Image.open(semantic[record["file_name"]]))
        stuff = np.asarray(Image.open(stuff_only[record["file_name"]]))
        things = [s for s in record["segments_info"] if s["isthing"]]
        assert len(things) == len(instances.imgToAnns[record["image_id"]])
        for segment in record["segments_info"]:
            region = ids == segment["id"]
            assert int(region.sum()) == segment["area"]
            assert (labels[region] == segment["category_id"]).all()  # contiguous ids agree
            assert (stuff[region] == (0 if segment["isthing"] else segment["category_id"] - 2)).all()
        for segment, annotation in zip(things, instances.imgToAnns[record["image_id"]]):
            drawn = instances.annToMask(annotation).astype(bool)
            truth = ids == segment["id"]
            assert (drawn & truth).sum() / (drawn | truth).sum() > 0.85


def test_the_data_is_not_trivial(generated):
    coco = COCO(os.path.join(generated["instances"], "instances.json"))
    areas = [a["area"] for a in coco.anns.values()]
    assert min(areas) < 32 * 32 and max(areas) > 96 * 96  # COCO's small and large objects
    overlapping = 0
    for anns in coco.imgToAnns.values():
        boxes = np.array([a["bbox"] for a in anns])
        x0, y0 = boxes[:, 0], boxes[:, 1]
        x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
        iw = np.minimum(x1[:, None], x1[None]) - np.maximum(x0[:, None], x0[None])
        ih = np.minimum(y1[:, None], y1[None]) - np.maximum(y0[:, None], y0[None])
        overlapping += int(np.triu((iw > 0) & (ih > 0), k=1).sum())
    assert overlapping >= 3  # objects overlap (and the later ones hide part of the earlier)
    assert len({a["category_id"] for a in coco.anns.values()}) == 3
    keypoints = COCO(os.path.join(generated["keypoints"], "person_keypoints.json"))
    visibilities = np.concatenate([np.array(a["keypoints"])[2::3] for a in keypoints.anns.values()])
    assert set(visibilities) == {0, 1, 2}  # outside the image, occluded, visible


def test_cache_reuse_and_regeneration(tmp_path):
    root = str(tmp_path)
    folder = generate_shapes(root, "instances", "train", num_images=2)
    stamp = os.path.getmtime(os.path.join(folder, "info.json"))
    assert generate_shapes(root, "instances", "train", num_images=2) == folder
    assert os.path.getmtime(os.path.join(folder, "info.json")) == stamp  # reused
    generate_shapes(root, "instances", "train", num_images=3)  # other parameters: regenerated
    assert len(os.listdir(os.path.join(folder, "images"))) == 3
    assert json.load(open(os.path.join(folder, "info.json")))["num_images"] == 3
    assert sorted(os.listdir(root)) == ["instances_train", "instances_train.lock"]  # no temporary folder left
    with pytest.raises(ValueError, match="unknown shapes dataset kind 'boxes'"):
        generate_shapes(root, "boxes")
    with pytest.raises(ValueError, match="no default size"):
        generate_shapes(root, "instances", "test")
    with pytest.raises(ValueError, match="image_size"):
        generate_shapes(root, "instances", "train", image_size=(300, 200))


def test_concurrent_generation(tmp_path):
    root = str(tmp_path / "shared")
    results, errors = [], []

    def worker():
        try:
            results.append(files_of(generate_shapes(root, "instances", "val", num_images=4)))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3
    assert results[0] == results[1] == results[2]
    assert results[0] == files_of(generate_shapes(str(tmp_path / "alone"), "instances", "val", num_images=4))


@pytest.fixture
def empty_catalogs():
    saved = (dict(DatasetCatalog.data), dict(MetadataCatalog.data), dict(catalog_module._LAZY_METADATA))
    for registry in (DatasetCatalog, MetadataCatalog, catalog_module._LAZY_METADATA):
        registry.clear()
    try:
        yield
    finally:
        for registry, content in zip((DatasetCatalog, MetadataCatalog, catalog_module._LAZY_METADATA), saved):
            registry.clear()
            registry.update(content)


def test_registered_datasets(tmp_path, monkeypatch, empty_catalogs):
    small = {kind: {"train": 3, "val": 2} for kind in shapes.KINDS}
    monkeypatch.setattr(shapes, "DEFAULT_NUM_IMAGES", small)
    root = str(tmp_path / "shapes")
    shapes.register_all_shapes(root)
    assert not os.path.exists(root)  # generated on first use only

    records = DatasetCatalog.get("shapes_train")
    assert len(records) == 3 and sorted(os.listdir(root)) == ["instances_train", "instances_train.lock"]
    meta = MetadataCatalog.get("shapes_train")
    assert meta.thing_classes == ["circle", "triangle", "square"] and meta.evaluator_type == "coco"
    assert os.path.isfile(meta.json_file) and meta.image_root == os.path.dirname(records[0]["file_name"])

    keypoints = DatasetCatalog.get("shapes_keypoints_val")
    assert len(keypoints) == 2 and len(keypoints[0]["annotations"][0]["keypoints"]) == 51
    assert MetadataCatalog.get("shapes_keypoints_val").keypoint_names == COCO_PERSON_KEYPOINT_NAMES

    sem_seg = DatasetCatalog.get("shapes_sem_seg_train")
    assert len(sem_seg) == 3 and MetadataCatalog.get("shapes_sem_seg_train").stuff_classes == [
        "circle", "triangle", "square", "sky", "grass", "water"]
    standard = DatasetCatalog.get("shapes_panoptic_train")
    assert len(standard) == 3 and "segments_info" in standard[0]
    separated = DatasetCatalog.get("shapes_panoptic_train_separated")
    assert "annotations" in separated[0] and "sem_seg_file_name" in separated[0]
    assert MetadataCatalog.get("shapes_panoptic_train_separated").stuff_classes == ["things", "sky", "grass", "water"]
    assert len(DatasetCatalog.get("shapes_panoptic_val_stuffonly")) == 2
