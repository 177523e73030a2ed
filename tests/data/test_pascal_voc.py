"""PASCAL VOC loading (datasets/pascal_voc.py) on a tiny VOCdevkit folder written in the test."""
import os
import uuid

import pytest

from detzoo.data.catalog import DatasetCatalog, MetadataCatalog
from detzoo.data.datasets import load_voc_instances, register_pascal_voc
from detzoo.data.datasets.pascal_voc import CLASS_NAMES
from detzoo.structures import BoxMode


def voc_xml(width, height, objects):
    parts = [f"<annotation><folder>VOC2007</folder><size><width>{width}</width><height>{height}</height>"
             "<depth>3</depth></size>"]
    for name, box, difficult in objects:
        xmin, ymin, xmax, ymax = box
        parts.append(f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>"
                     f"<difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
                     f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")
    parts.append("</annotation>")
    return "".join(parts)


ANNOTATIONS = {
    "000005": (500, 375, [("chair", (263, 211, 324, 339), 0), ("person", (1, 1, 500, 375), 1)]),
    "000007": (500, 333, [("car", (141, 50, 500, 330), 0)]),
    "000009": (500, 375, []),
}


def write_voc(root, annotations=ANNOTATIONS, split="trainval"):
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        os.makedirs(root / sub, exist_ok=True)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(annotations) + "\n\n")
    for file_id, (width, height, objects) in annotations.items():
        (root / "Annotations" / f"{file_id}.xml").write_text(voc_xml(width, height, objects))
    return str(root)


def test_load_voc_instances(tmp_path):
    dirname = write_voc(tmp_path / "VOC2007")
    records = load_voc_instances(dirname, "trainval")
    assert [r["image_id"] for r in records] == ["000005", "000007", "000009"]
    first = records[0]
    assert first["file_name"] == os.path.join(dirname, "JPEGImages", "000005.jpg")
    assert (first["height"], first["width"]) == (375, 500)
    chair, person = first["annotations"]
    assert chair["category_id"] == CLASS_NAMES.index("chair") and chair["bbox_mode"] == BoxMode.XYXY_ABS
    assert chair["bbox"] == [262.0, 210.0, 324.0, 339.0]  # 1-based inclusive -> continuous
    assert person["bbox"] == [0.0, 0.0, 500.0, 375.0]  # a "difficult" object is kept
    assert records[2]["annotations"] == []


def test_custom_class_names_and_registration(tmp_path):
    dirname = write_voc(tmp_path / "VOC2012", {"a": (10, 10, [("car", (2, 2, 5, 5), 0)])}, split="val")
    name = f"voc_test_{uuid.uuid4().hex[:8]}"
    register_pascal_voc(name, dirname, "val", 2012, class_names=["bus", "car"])
    meta = MetadataCatalog.get(name)
    assert (meta.thing_classes, meta.year, meta.split, meta.dirname) == (["bus", "car"], 2012, "val", dirname)
    assert DatasetCatalog.get(name)[0]["annotations"][0]["category_id"] == 1


def test_registering_is_lazy(tmp_path):
    name = f"voc_test_{uuid.uuid4().hex[:8]}"
    register_pascal_voc(name, str(tmp_path / "absent"), "train", 2007)
    with pytest.raises(FileNotFoundError, match=r"absent.*train.txt does not exist"):
        DatasetCatalog.get(name)


BAD = [
    ("unknown class", "<annotation><size><width>9</width><height>9</height></size><object><name>dragon</name>"
     "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax><ymax>4</ymax></bndbox></object></annotation>",
     r"bad.xml: object 0: class 'dragon'"),
    ("no size", "<annotation></annotation>", r"bad.xml: missing <size/height>"),
    ("no box", "<annotation><size><width>9</width><height>9</height></size><object><name>car</name></object>"
     "</annotation>", r"bad.xml: object 0: missing <bndbox/xmin>"),
    ("empty box", "<annotation><size><width>9</width><height>9</height></size><object><name>car</name>"
     "<bndbox><xmin>5</xmin><ymin>1</ymin><xmax>3</xmax><ymax>4</ymax></bndbox></object></annotation>",
     r"bad.xml: object 0: box .* is empty"),
    ("not a number", "<annotation><size><width>nine</width><height>9</height></size></annotation>",
     r"bad.xml: <size/width> must be a number"),
    ("broken xml", "<annotation><size>", r"bad.xml: not a valid XML file"),
]


@pytest.mark.parametrize("xml,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_annotations(tmp_path, xml, message):
    dirname = write_voc(tmp_path, {})
    (tmp_path / "ImageSets" / "Main" / "trainval.txt").write_text("bad\n")
    (tmp_path / "Annotations" / "bad.xml").write_text(xml)
    with pytest.raises(ValueError, match=message):
        load_voc_instances(dirname, "trainval")
