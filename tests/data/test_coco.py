"""COCO-format loading and writing (datasets/coco.py) and COCO panoptic (datasets/coco_panoptic.py),
on small files written in the real formats inside each test, checked against pycocotools."""
import copy
import json
import logging
import os
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image
from pycocotools.coco import COCO

from detzoo.data.catalog import DatasetCatalog, MetadataCatalog
from detzoo.data.datasets import (
    convert_to_coco_dict,
    convert_to_coco_json,
    load_coco_json,
    load_coco_panoptic_json,
    load_sem_seg,
    register_coco_instances,
    register_coco_panoptic,
    register_coco_panoptic_separated,
)
from detzoo.structures import BoxMode


def unique(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def uncompressed_rle(mask):
    """COCO's uncompressed RLE of a binary mask: run lengths in column-major order, zeros first."""
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for pixel in flat:
        if pixel == value:
            run += 1
        else:
            counts.append(run)
            value, run = pixel, 1
    counts.append(run)
    return {"counts": [int(c) for c in counts], "size": list(mask.shape)}


def coco_dict():
    """Three images (unsorted ids, one without annotations), categories with non-contiguous
    unsorted ids, polygons (one invalid polygon among valid ones), compressed and
    uncompressed RLE, a crowd region and keypoints."""
    rle_mask = np.zeros((40, 50), dtype=np.uint8, order="F")
    rle_mask[5:20, 10:30] = 1
    compressed = mask_util.encode(rle_mask)
    compressed["counts"] = compressed["counts"].decode("ascii")
    crowd_mask = np.zeros((40, 50), dtype=np.uint8)
    crowd_mask[25:35, 2:40] = 1
    return {
        "images": [
            {"id": 10, "file_name": "a.jpg", "height": 30, "width": 40},
            {"id": 3, "file_name": "sub/b.jpg", "height": 40, "width": 50},
            {"id": 7, "file_name": "empty.jpg", "height": 20, "width": 20},
        ],
        "categories": [
            {"id": 9, "name": "cat9"},
            {"id": 2, "name": "person", "keypoints": ["k1", "k2"], "skeleton": [[1, 2]]},
            {"id": 5, "name": "cat5"},
        ],
        "annotations": [
            {"id": 100, "image_id": 10, "category_id": 9, "bbox": [2, 3, 10, 8], "iscrowd": 0, "area": 80,
             "segmentation": [[2, 3, 12, 3, 12, 11, 2, 11]]},
            {"id": 101, "image_id": 10, "category_id": 5, "bbox": [5, 5, 6, 6], "iscrowd": 0, "area": 18,
             "segmentation": [[5, 5, 11, 5, 11, 11], [1, 2, 3, 4]]},
            {"id": 102, "image_id": 3, "category_id": 5, "bbox": [10, 5, 20, 15], "iscrowd": 0, "area": 300,
             "segmentation": compressed},
            {"id": 103, "image_id": 3, "category_id": 9, "bbox": [2, 25, 38, 10], "iscrowd": 1, "area": 380,
             "segmentation": uncompressed_rle(crowd_mask)},
            {"id": 104, "image_id": 3, "category_id": 2, "bbox": [3, 4, 10, 10], "iscrowd": 0, "area": 100,
             "segmentation": [[3, 4, 13, 4, 13, 14, 3, 14]], "keypoints": [4, 5, 2, 10, 12, 1], "num_keypoints": 2,
             "attr": "extra"},
        ],
    }


def write_json(path, content):
    with open(path, "w") as f:
        json.dump(content, f)
    return str(path)


def mask_of(segmentation, h, w):
    """pycocotools' rasterization of polygons, or of an RLE (compressed or not)."""
    if isinstance(segmentation, list) or isinstance(segmentation["counts"], list):
        rles = mask_util.frPyObjects(segmentation, h, w)
        return mask_util.decode(mask_util.merge(rles) if isinstance(rles, list) else rles)
    counts = segmentation["counts"]
    return mask_util.decode(dict(segmentation, counts=counts.encode("ascii") if isinstance(counts, str) else counts))


# ----------------------------------------------------------------------------- load_coco_json
class TestLoadCocoJson:
    def test_matches_pycocotools(self, tmp_path):
        json_file = write_json(tmp_path / "instances.json", coco_dict())
        name = unique("coco_test")
        records = load_coco_json(json_file, "/images", name, extra_annotation_keys=["attr"])
        coco = COCO(json_file)

        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == ["person", "cat5", "cat9"]
        assert meta.thing_dataset_id_to_contiguous_id == {2: 0, 5: 1, 9: 2}
        assert [r["image_id"] for r in records] == sorted(coco.imgs)
        for record in records:
            img = coco.imgs[record["image_id"]]
            assert record["file_name"] == os.path.join("/images", img["file_name"])
            assert (record["height"], record["width"]) == (img["height"], img["width"])
            expected = coco.imgToAnns[record["image_id"]]
            assert len(record["annotations"]) == len(expected)
            for ours, theirs in zip(record["annotations"], expected):
                assert ours["bbox"] == theirs["bbox"] and ours["bbox_mode"] == BoxMode.XYWH_ABS
                assert ours["category_id"] == meta.thing_dataset_id_to_contiguous_id[theirs["category_id"]]
                assert ours["iscrowd"] == theirs["iscrowd"]
                np.testing.assert_array_equal(mask_of(ours["segmentation"], img["height"], img["width"]),
                                              coco.annToMask(theirs))
        by_id = {r["image_id"]: r for r in records}
        assert by_id[7]["annotations"] == []
        polygons = by_id[10]["annotations"][1]["segmentation"]
        assert polygons == [[5, 5, 11, 5, 11, 11]]  # the 2-point polygon is dropped
        crowd = by_id[3]["annotations"][1]
        assert isinstance(crowd["segmentation"]["counts"], bytes)  # uncompressed RLE was compressed
        person = by_id[3]["annotations"][2]
        assert person["keypoints"] == [4.5, 5.5, 2, 10.5, 12.5, 1]  # pixel indices -> pixel centres
        assert person["attr"] == "extra" and "attr" not in by_id[10]["annotations"][0]

    def test_without_dataset_name_keeps_dataset_ids(self, tmp_path):
        json_file = write_json(tmp_path / "instances.json", coco_dict())
        records = load_coco_json(json_file, "")
        assert [a["category_id"] for a in records[0]["annotations"]] == [5, 9, 2]

    def test_image_info_file_without_annotations(self, tmp_path):
        content = coco_dict()
        del content["annotations"]
        records = load_coco_json(write_json(tmp_path / "test.json", content), "", unique("coco_test"))
        assert len(records) == 3 and all(r["annotations"] == [] for r in records)

    def test_metadata_conflict_is_reported(self, tmp_path):
        name = unique("coco_test")
        MetadataCatalog.get(name).set(thing_classes=["a", "b", "c"])
        with pytest.raises(ValueError, match="thing_classes"):
            load_coco_json(write_json(tmp_path / "i.json", coco_dict()), "", name)


def mutate(edit):
    content = coco_dict()
    edit(content)
    return content


def ann(content, ann_id):
    return next(a for a in content["annotations"] if a["id"] == ann_id)


BAD_FILES = [
    ("missing bbox", lambda c: ann(c, 100).pop("bbox"), r"annotation 100 has no 'bbox'"),
    ("negative width", lambda c: ann(c, 100).update(bbox=[2, 3, -1, 8]), r"annotation 100 \(image 10\).*negative"),
    ("bbox type", lambda c: ann(c, 100).update(bbox="2 3 4 5"), r"annotation 100 \(image 10\).*'bbox'"),
    ("unknown category", lambda c: ann(c, 101).update(category_id=77), r"annotation 101 \(image 10\).*category_id 77"),
    ("keypoint count", lambda c: ann(c, 104).update(keypoints=[4, 5, 2]),
     r"annotation 104 \(image 3\).*1 keypoints.*names 2"),
    ("keypoints not triples", lambda c: ann(c, 104).update(keypoints=[4, 5, 2, 1]), r"annotation 104 \(image 3\)"),
    ("keypoint visibility", lambda c: ann(c, 104).update(keypoints=[4, 5, 7, 10, 12, 1]), r"annotation 104.*visibilit"),
    ("image without height", lambda c: c["images"][0].pop("height"), r"image 10: 'height'"),
    ("image id twice", lambda c: c["images"].append(dict(c["images"][0])), r"image 10 is listed twice"),
    ("segmentation type", lambda c: ann(c, 100).update(segmentation="poly"), r"annotation 100 \(image 10\).*'segment"),
    ("polygon values", lambda c: ann(c, 100).update(segmentation=[[1, 2, "x", 4, 5, 6]]), r"annotation 100"),
    ("RLE size", lambda c: ann(c, 102).update(segmentation=dict(ann(c, 102)["segmentation"], size=[4, 5])),
     r"annotation 102 \(image 3\).*RLE size \[4, 5\]"),
    ("duplicate ids", lambda c: ann(c, 101).update(id=100), r"not unique: \[100\]"),
    ("annotation without id", lambda c: ann(c, 101).pop("id"), r"annotations\[1\] needs an int 'id'"),
    ("ignore flag", lambda c: ann(c, 100).update(ignore=1), r"annotation 100.*'ignore'"),
    ("crowd flag", lambda c: ann(c, 100).update(iscrowd=3), r"annotation 100.*'iscrowd'"),
    ("no images", lambda c: c.pop("images"), r"not a COCO annotation file"),
    ("category without name", lambda c: c["categories"][0].pop("name"), r"categories\[0\]"),
]


@pytest.mark.parametrize("edit,message", [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES])
def test_bad_input_names_file_and_ids(tmp_path, edit, message):
    json_file = write_json(tmp_path / "broken.json", mutate(edit))
    with pytest.raises(ValueError, match=message) as info:
        load_coco_json(json_file, "", unique("coco_bad"))
    assert "broken.json" in str(info.value)


def test_not_json(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="x.json: not a valid JSON"):
        load_coco_json(str(path), "")


SKIPPED = [
    ("polygon of 2 points", lambda c: ann(c, 100).update(segmentation=[[1, 2, 3, 4]]), "without a valid polygon"),
    ("odd coordinates", lambda c: ann(c, 100).update(segmentation=[[1, 2, 3, 4, 5, 6, 7]]), "without a valid polygon"),
    ("box outside", lambda c: ann(c, 100).update(bbox=[45, 3, 10, 8]), "with a box entirely outside"),
    ("empty box", lambda c: ann(c, 100).update(bbox=[2, 3, 0, 8]), "with a box of zero width or height"),
]


@pytest.mark.parametrize("edit,reason", [s[1:] for s in SKIPPED], ids=[s[0] for s in SKIPPED])
def test_tolerated_defects_are_counted_and_logged(tmp_path, caplog, edit, reason):
    json_file = write_json(tmp_path / "defects.json", mutate(edit))
    with caplog.at_level(logging.WARNING):
        records = load_coco_json(json_file, "", unique("coco_skip"))
    by_id = {r["image_id"]: r for r in records}
    assert len(by_id[10]["annotations"]) == 1  # annotation 100 skipped, 101 kept
    assert f"skipped 1 of 5 annotations: 1 {reason}" in caplog.text and "annotation ids 100" in caplog.text
    assert "defects.json" in caplog.text


def test_annotations_of_unknown_images_are_reported(tmp_path, caplog):
    json_file = write_json(tmp_path / "orphans.json", mutate(lambda c: ann(c, 100).update(image_id=999)))
    with caplog.at_level(logging.WARNING):
        records = load_coco_json(json_file, "")
    assert sum(len(r["annotations"]) for r in records) == 4
    assert "of images not listed in 'images' (annotation ids 100)" in caplog.text


def test_all_annotations_unusable_raises(tmp_path):
    def edit(content):
        for a in content["annotations"]:
            a["bbox"] = [500, 500, 1, 1]

    with pytest.raises(ValueError, match="every one of its 5 annotations is unusable"):
        load_coco_json(write_json(tmp_path / "useless.json", mutate(edit)), "")


def test_minival_files_may_repeat_annotation_ids(tmp_path):
    content = mutate(lambda c: ann(c, 101).update(id=100))
    records = load_coco_json(write_json(tmp_path / "instances_minival2014.json", content), "")
    assert sum(len(r["annotations"]) for r in records) == 5


# ------------------------------------------------------------------------------ load_sem_seg
def test_load_sem_seg_pairs_by_name(tmp_path, caplog):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for name in ("1", "2", "10", "3"):
        Image.new("RGB", (8, 6)).save(images / f"{name}.jpg")
    for name in ("1", "2", "10", "4"):
        Image.fromarray(np.zeros((6, 8), np.uint8)).save(labels / f"{name}.png")
    (images / "notes.txt").write_text("ignored")
    with caplog.at_level(logging.WARNING):
        records = load_sem_seg(str(labels), str(images))
    assert [os.path.basename(r["file_name"]) for r in records] == ["1.jpg", "2.jpg", "10.jpg"]  # numeric order
    assert [os.path.basename(r["sem_seg_file_name"]) for r in records] == ["1.png", "2.png", "10.png"]
    assert "using the 3 names found in both" in caplog.text

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no \\*png ground-truth files"):
        load_sem_seg(str(empty), str(images))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_sem_seg(str(tmp_path / "missing"), str(images))


# ----------------------------------------------------------------------- register / convert
def test_register_coco_instances_is_lazy(tmp_path):
    name = unique("coco_reg")
    json_file = str(tmp_path / "later.json")
    register_coco_instances(name, {"extra": 1}, json_file, str(tmp_path))
    meta = MetadataCatalog.get(name)
    assert (meta.json_file, meta.image_root, meta.evaluator_type, meta.extra) == (json_file, str(tmp_path), "coco", 1)
    write_json(json_file, coco_dict())  # written after registering
    assert len(DatasetCatalog.get(name)) == 3
    with pytest.raises(TypeError, match="json_file must be a path"):
        register_coco_instances(unique("coco_reg"), {}, 3, str(tmp_path))


def test_convert_to_coco_round_trip(tmp_path):
    original = coco_dict()
    name = unique("coco_conv")
    register_coco_instances(name, {}, write_json(tmp_path / "in.json", original), "root")
    converted = convert_to_coco_dict(name)

    assert {c["id"]: c["name"] for c in converted["categories"]} == {2: "person", 5: "cat5", 9: "cat9"}
    assert sorted(i["id"] for i in converted["images"]) == [3, 7, 10]
    original_by_key = {(a["image_id"], tuple(a["bbox"])): a for a in original["annotations"]}
    assert len(converted["annotations"]) == 5
    for a in converted["annotations"]:
        source = original_by_key[(a["image_id"], tuple(a["bbox"]))]
        assert a["category_id"] == source["category_id"] and a["iscrowd"] == source["iscrowd"]
        if "keypoints" in source:
            assert a["keypoints"] == source["keypoints"] and a["num_keypoints"] == 2
        if isinstance(source["segmentation"], list):
            assert a["area"] == pytest.approx(source["area"])  # the polygon areas of the fixture
        else:
            h, w = source["segmentation"]["size"]
            assert a["area"] == pytest.approx(float(mask_of(source["segmentation"], h, w).sum()))
            assert isinstance(a["segmentation"]["counts"], str)  # JSON-serializable

    out = str(tmp_path / "cache" / "converted.json")
    convert_to_coco_json(name, out)
    reloaded = COCO(out)
    assert len(reloaded.anns) == 5 and sorted(reloaded.getCatIds()) == [2, 5, 9]
    with open(out, "w") as f:
        f.write("{}")
    convert_to_coco_json(name, out)  # cached: kept
    assert open(out).read() == "{}"
    convert_to_coco_json(name, out, allow_cached=False)
    assert len(json.load(open(out))["annotations"]) == 5


def test_convert_xyxy_boxes_without_id_map(tmp_path):
    name = unique("coco_xyxy")
    DatasetCatalog.register(name, lambda: [{"file_name": "x.jpg", "image_id": 1, "height": 10, "width": 10,
                                            "annotations": [{"bbox": [1, 2, 5, 8], "bbox_mode": BoxMode.XYXY_ABS,
                                                             "category_id": 0}]}])
    MetadataCatalog.get(name).thing_classes = ["thing"]
    converted = convert_to_coco_dict(name)
    assert converted["categories"] == [{"id": 0, "name": "thing"}]
    assert converted["annotations"][0]["bbox"] == [1, 2, 4, 6] and converted["annotations"][0]["area"] == 24


# ---------------------------------------------------------------------------- COCO panoptic
PANOPTIC_META = {"thing_dataset_id_to_contiguous_id": {1: 0, 2: 1},
                 "stuff_dataset_id_to_contiguous_id": {0: 0, 101: 1}}


def write_panoptic(tmp_path):
    """One 8x10 image: stuff 101 everywhere, thing 2 in a box. Returns the folders and JSON."""
    for sub in ("images", "panoptic", "stuff", "annotations"):
        (tmp_path / sub).mkdir()
    ids = np.full((8, 10), 5, dtype=np.int64)
    ids[2:6, 3:7] = 300
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "panoptic" / "000042.png")
    Image.new("RGB", (10, 8)).save(tmp_path / "images" / "000042.jpg")
    stuff = np.where(ids == 300, 0, 1).astype(np.uint8)
    Image.fromarray(stuff).save(tmp_path / "stuff" / "000042.png")
    panoptic = {"images": [{"id": 42, "file_name": "000042.jpg", "height": 8, "width": 10}],
                "annotations": [{"image_id": 42, "file_name": "000042.png", "segments_info": [
                    {"id": 5, "category_id": 101, "iscrowd": 0, "bbox": [0, 0, 10, 8], "area": 64},
                    {"id": 300, "category_id": 2, "iscrowd": 0, "bbox": [3, 2, 4, 4], "area": 16}]}],
                "categories": [{"id": 1, "name": "a", "isthing": 1}, {"id": 2, "name": "b", "isthing": 1},
                               {"id": 101, "name": "s", "isthing": 0}]}
    instances = {"images": panoptic["images"], "categories": panoptic["categories"][:2],
                 "annotations": [{"id": 1, "image_id": 42, "category_id": 2, "bbox": [3, 2, 4, 4], "iscrowd": 0,
                                  "area": 16, "segmentation": [[3, 2, 7, 2, 7, 6, 3, 6]]}]}
    return (str(tmp_path / "images"), str(tmp_path / "panoptic"), str(tmp_path / "stuff"),
            write_json(tmp_path / "annotations" / "panoptic.json", panoptic),
            write_json(tmp_path / "annotations" / "instances.json", instances))


def test_load_coco_panoptic_json(tmp_path):
    image_root, panoptic_root, _, panoptic_json, _ = write_panoptic(tmp_path)
    (record,) = load_coco_panoptic_json(panoptic_json, image_root, panoptic_root, PANOPTIC_META)
    assert record["file_name"] == os.path.join(image_root, "000042.jpg") and record["image_id"] == 42
    assert record["pan_seg_file_name"] == os.path.join(panoptic_root, "000042.png")
    segments = {s["id"]: s for s in record["segments_info"]}
    assert (segments[5]["category_id"], segments[5]["isthing"]) == (1, False)
    assert (segments[300]["category_id"], segments[300]["isthing"]) == (1, True)
    # every segment id is present in the PNG with the stated area
    png = np.asarray(Image.open(record["pan_seg_file_name"]), dtype=np.int64)
    ids = png[..., 0] + 256 * png[..., 1] + 65536 * png[..., 2]
    for s in record["segments_info"]:
        assert int((ids == s["id"]).sum()) == s["area"]

    bad = json.load(open(panoptic_json))
    bad["annotations"][0]["segments_info"][1]["category_id"] = 55
    with pytest.raises(ValueError, match=r"bad.json: image 42: segment 300 has category_id 55"):
        load_coco_panoptic_json(write_json(tmp_path / "bad.json", bad), image_root, panoptic_root, PANOPTIC_META)


def test_register_coco_panoptic_variants(tmp_path):
    image_root, panoptic_root, stuff_root, panoptic_json, instances_json = write_panoptic(tmp_path)
    meta = dict(PANOPTIC_META, thing_classes=["a", "b"], stuff_classes=["things", "s"])
    prefix = unique("pan")
    register_coco_panoptic(prefix, meta, image_root, panoptic_root, panoptic_json, instances_json)
    register_coco_panoptic_separated(prefix, meta, image_root, panoptic_root, panoptic_json, stuff_root,
                                     instances_json)
    assert MetadataCatalog.get(prefix).evaluator_type == "coco_panoptic_seg"
    assert MetadataCatalog.get(prefix).label_divisor == 1000
    assert len(DatasetCatalog.get(prefix)[0]["segments_info"]) == 2

    (merged,) = DatasetCatalog.get(prefix + "_separated")
    assert merged["sem_seg_file_name"] == os.path.join(stuff_root, "000042.png")
    assert merged["annotations"][0]["category_id"] == 1  # thing id 2 -> contiguous 1
    (stuff_only,) = DatasetCatalog.get(prefix + "_stuffonly")
    assert set(stuff_only) == {"file_name", "sem_seg_file_name"}
    assert MetadataCatalog.get(prefix + "_stuffonly").evaluator_type == "sem_seg"


def test_loaded_records_do_not_alias_the_file_dict(tmp_path):
    content = coco_dict()
    records = load_coco_json(write_json(tmp_path / "i.json", content), "")
    before = copy.deepcopy(records)
    records[0]["annotations"][2]["keypoints"][0] = -1  # image 3's person
    assert load_coco_json(str(tmp_path / "i.json"), "") == before
