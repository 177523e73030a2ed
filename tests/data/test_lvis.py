"""LVIS-format loading (datasets/lvis.py) on small LVIS files written in the test, checked
against the `lvis` package's own LVIS class."""
import json
import os
import sys
import uuid

import pytest

from detzoo.data.catalog import DatasetCatalog, MetadataCatalog
from detzoo.data.datasets import get_lvis_instances_meta, load_lvis_json, register_lvis_instances
from detzoo.data.datasets.builtin_meta import _get_builtin_metadata
from detzoo.structures import BoxMode


def unique(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def lvis_dict():
    """Three categories (ids 1..3), two images located by coco_url, federated fields."""
    categories = [
        {"id": 1, "name": "aerosol_can", "synonyms": ["aerosol_can", "spray_can"], "synset": "aerosol.n.02",
         "frequency": "c", "image_count": 1, "instance_count": 1, "def": "a dispenser"},
        {"id": 2, "name": "apple", "synonyms": ["apple"], "synset": "apple.n.01", "frequency": "f",
         "image_count": 2, "instance_count": 3, "def": "fruit"},
        {"id": 3, "name": "trash_can", "synonyms": ["trash_can", "garbage_can"], "synset": "ashcan.n.01",
         "frequency": "r", "image_count": 1, "instance_count": 1, "def": "a bin"},
    ]
    images = [
        {"id": 397133, "height": 40, "width": 60, "coco_url": "http://images.cocodataset.org/val2017/000000397133.jpg",
         "not_exhaustive_category_ids": [2], "neg_category_ids": [3]},
        {"id": 5, "height": 30, "width": 30, "coco_url": "http://images.cocodataset.org/train2017/000000000005.jpg",
         "not_exhaustive_category_ids": [], "neg_category_ids": []},
    ]
    square = [[2, 2, 12, 2, 12, 12, 2, 12]]
    annotations = [
        {"id": 1, "image_id": 397133, "category_id": 2, "bbox": [2, 2, 10, 10], "area": 100, "segmentation": square},
        {"id": 2, "image_id": 397133, "category_id": 1, "bbox": [20, 5, 10, 10], "area": 50,
         "segmentation": [[20, 5, 30, 5, 30, 15]]},
        {"id": 3, "image_id": 5, "category_id": 2, "bbox": [2, 2, 10, 10], "area": 100, "segmentation": square},
        {"id": 4, "image_id": 5, "category_id": 3, "bbox": [1, 1, 5, 5], "area": 25,
         "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]]},
        {"id": 5, "image_id": 5, "category_id": 2, "bbox": [15, 15, 5, 5], "area": 25,
         "segmentation": [[15, 15, 20, 15, 20, 20, 15, 20]]},
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_json(path, content):
    with open(path, "w") as f:
        json.dump(content, f)
    return str(path)


@pytest.fixture
def lvis_file(tmp_path):
    return write_json(tmp_path / "lvis_v1_val.json", lvis_dict())


def check_against_lvis_api(records, json_file):
    from lvis import LVIS

    api = LVIS(json_file)
    assert [r["image_id"] for r in records] == sorted(api.imgs)
    for record in records:
        img = api.imgs[record["image_id"]]
        assert record["not_exhaustive_category_ids"] == img["not_exhaustive_category_ids"]
        assert record["neg_category_ids"] == img["neg_category_ids"]
        expected = api.img_ann_map[record["image_id"]]
        assert [a["bbox"] for a in record["annotations"]] == [a["bbox"] for a in expected]
        assert [a["category_id"] for a in record["annotations"]] == [a["category_id"] - 1 for a in expected]
        assert [a["segmentation"] for a in record["annotations"]] == [a["segmentation"] for a in expected]
        assert all(a["bbox_mode"] == BoxMode.XYWH_ABS for a in record["annotations"])


def test_load_matches_lvis_api(lvis_file):
    pytest.importorskip("lvis")
    name = unique("lvis_v1_test")
    records = load_lvis_json(lvis_file, "coco/", name)
    check_against_lvis_api(records, lvis_file)
    assert records[0]["file_name"] == os.path.join("coco", "train2017", "000000000005.jpg")
    assert records[1]["file_name"] == os.path.join("coco", "val2017", "000000397133.jpg")
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["aerosol_can", "apple", "trash_can"]  # first synonyms
    assert meta.class_image_count == [{"id": 1, "image_count": 1}, {"id": 2, "image_count": 2},
                                      {"id": 3, "image_count": 1}]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}


def test_load_without_lvis_package(lvis_file, monkeypatch):
    pytest.importorskip("lvis")
    expected = load_lvis_json(lvis_file, "coco/")
    monkeypatch.setitem(sys.modules, "lvis", None)  # `from lvis import LVIS` now fails
    assert load_lvis_json(lvis_file, "coco/") == expected


def test_cocofied_uses_coco_classes(tmp_path):
    content = lvis_dict()
    to_coco = {1: 1, 2: 44, 3: 90}  # cocofied files use COCO's category ids
    for cat in content["categories"]:
        cat["id"] = to_coco[cat["id"]]
    for a in content["annotations"]:
        a["category_id"] = to_coco[a["category_id"]]
    name = unique("lvis_v0.5_val_cocofied")
    records = load_lvis_json(write_json(tmp_path / "c.json", content), "coco/", name)
    coco = _get_builtin_metadata("coco")
    assert MetadataCatalog.get(name).thing_classes == coco["thing_classes"]
    ids = sorted(a["category_id"] for r in records for a in r["annotations"])
    assert ids == sorted([coco["thing_dataset_id_to_contiguous_id"][i] for i in (44, 1, 44, 90, 44)])


def test_non_contiguous_ids_get_a_table(tmp_path):
    content = lvis_dict()
    for cat in content["categories"]:
        cat["id"] *= 10
    for a in content["annotations"]:
        a["category_id"] *= 10
    name = unique("custom_lvis")
    records = load_lvis_json(write_json(tmp_path / "x.json", content), "coco/", name)
    assert MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id == {10: 0, 20: 1, 30: 2}
    assert [a["category_id"] for a in records[0]["annotations"]] == [1, 2, 1]


def test_registered_metadata_is_read_lazily(tmp_path):
    json_file = str(tmp_path / "lvis_v1_val.json")
    name = unique("lvis_v1_lazy")
    register_lvis_instances(name, {}, json_file, "coco/")
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "lvis" and meta.json_file == json_file
    assert meta.get("thing_classes") is None  # the file is not there yet
    write_json(json_file, lvis_dict())
    assert meta.thing_classes == ["aerosol_can", "apple", "trash_can"]  # no dataset load needed
    assert [c["image_count"] for c in meta.class_image_count] == [1, 2, 1]
    assert len(DatasetCatalog.get(name)) == 2  # and loading agrees with it


def test_get_lvis_instances_meta(lvis_file, tmp_path):
    meta = get_lvis_instances_meta("lvis_v1", json_file=lvis_file)
    assert meta["thing_classes"] == ["aerosol_can", "apple", "trash_can"]
    assert get_lvis_instances_meta("lvis_v0.5_cocofied")["thing_classes"][0] == "person"
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        get_lvis_instances_meta("lvis_v0.5", json_file=str(tmp_path / "nothing.json"))
    with pytest.raises(ValueError, match="no built-in LVIS metadata"):
        get_lvis_instances_meta("objects365")


def test_category_count_mismatch_is_logged(lvis_file, caplog):
    load_lvis_json(lvis_file, "coco/", unique("lvis_v1_subset"))
    assert "has 3 categories, while LVIS" in caplog.text and "1203" in caplog.text


def mutate(edit):
    content = lvis_dict()
    edit(content)
    return content


BAD = [
    ("no coco_url", lambda c: c["images"][1].pop("coco_url"), r"image 5: needs a str 'coco_url'"),
    ("neg ids type", lambda c: c["images"][1].update(neg_category_ids=3), r"image 5: 'neg_category_ids'"),
    ("unknown category", lambda c: c["annotations"][3].update(category_id=9),
     r"annotation 4 \(image 5\): category_id 9"),
    ("no segmentation", lambda c: c["annotations"][3].pop("segmentation"), r"annotation 4 \(image 5\).*polygon"),
    ("negative box", lambda c: c["annotations"][0].update(bbox=[1, 1, -2, 3]), r"annotation 1 \(image 397133\)"),
    ("no categories", lambda c: c.pop("categories"), r"not an LVIS annotation file"),
]


@pytest.mark.parametrize("edit,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input(tmp_path, edit, message):
    with pytest.raises(ValueError, match=message) as info:
        load_lvis_json(write_json(tmp_path / "bad_lvis.json", mutate(edit)), "coco/")
    assert "bad_lvis.json" in str(info.value)


def test_invalid_polygon_is_skipped_and_counted(tmp_path, caplog):
    content = mutate(lambda c: c["annotations"][1].update(segmentation=[[20, 5, 30, 5]]))
    records = load_lvis_json(write_json(tmp_path / "l.json", content), "coco/")
    assert sum(len(r["annotations"]) for r in records) == 4
    assert "skipped 1 of 5 annotations: 1 without a valid polygon" in caplog.text
