"""Cityscapes loaders (datasets/cityscapes.py, datasets/cityscapes_panoptic.py) on a tiny gtFine
tree whose PNGs are made from the polygon JSONs by cityscapesScripts' own preparation tools."""
import contextlib
import io
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

pytest.importorskip("cityscapesscripts")
from cityscapesscripts.helpers.labels import labels as cs_labels  # noqa: E402
from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic  # noqa: E402
from cityscapesscripts.helpers.annotation import Annotation  # noqa: E402
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage  # noqa: E402
from cityscapesscripts.preparation.json2labelImg import json2labelImg  # noqa: E402

from detzoo.data.datasets import load_cityscapes_instances, load_cityscapes_semantic  # noqa: E402
from detzoo.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES, _get_builtin_metadata  # noqa: E402
from detzoo.data.datasets.cityscapes_panoptic import _panoptic_meta, load_cityscapes_panoptic  # noqa: E402

H, W = 64, 96
THING_NAMES = [l.name for l in cs_labels if l.hasInstances and not l.ignoreInEval]


def rect(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


IMAGES = {
    ("aachen", "aachen_000000_000019"): [
        {"label": "sky", "polygon": rect(0, 0, 95, 25)},
        {"label": "road", "polygon": rect(0, 26, 95, 63)},
        {"label": "car", "polygon": rect(10, 30, 40, 50)},
        {"label": "car", "polygon": rect(30, 35, 60, 55)},  # covers part of the first car
        {"label": "license plate", "polygon": rect(40, 50, 45, 52)},  # id -1: never drawn
        {"label": "person", "polygon": [[70, 10], [80, 10], [78, 50], [72, 50]]},
        {"label": "cargroup", "polygon": rect(0, 55, 8, 63)},  # a crowd
        {"label": "caravan", "polygon": rect(82, 40, 92, 60)},  # not evaluated: dropped
        {"label": "car", "polygon": rect(85, 5, 90, 10), "deleted": 1},
    ],
    ("bochum", "bochum_000000_000313"): [
        {"label": "road", "polygon": rect(0, 0, 95, 63)},
        {"label": "bicycle", "polygon": [[20, 20], [50, 22], [45, 40], [18, 38]]},
    ],
}


def write_instance_ids(json_file, png_file):
    """cityscapesScripts' json2instanceImg, saved as the release's 16-bit PNG (recent Pillow
    no longer writes its 32-bit image mode as PNG)."""
    annotation = Annotation()
    annotation.fromJsonFile(json_file)
    ids = np.asarray(createInstanceImage(annotation, "ids"), dtype=np.uint16)
    Image.fromarray(ids).save(png_file)


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    """<root>/leftImg8bit/train/<city>/*.png and <root>/gtFine/train/<city>/* as in the release."""
    root = tmp_path_factory.mktemp("cityscapes")
    rng = np.random.default_rng(0)
    for (city, stem), objects in IMAGES.items():
        image_dir, gt_dir = root / "leftImg8bit" / "train" / city, root / "gtFine" / "train" / city
        image_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(image_dir / f"{stem}_leftImg8bit.png")
        json_file = gt_dir / f"{stem}_gtFine_polygons.json"
        json_file.write_text(json.dumps({"imgHeight": H, "imgWidth": W, "objects": objects}))
        write_instance_ids(str(json_file), str(gt_dir / f"{stem}_gtFine_instanceIds.png"))
        json2labelImg(str(json_file), str(gt_dir / f"{stem}_gtFine_labelIds.png"))
        json2labelImg(str(json_file), str(gt_dir / f"{stem}_gtFine_labelTrainIds.png"), "trainIds")
    return root


def dirs(root, split="train"):
    return str(root / "leftImg8bit" / split), str(root / "gtFine" / split)


def instance_png(root, city, stem):
    return np.asarray(Image.open(root / "gtFine" / "train" / city / f"{stem}_gtFine_instanceIds.png"))


def test_category_table_matches_cityscapesscripts():
    expected = [{"id": l.id, "trainId": l.trainId, "isthing": int(l.hasInstances), "color": tuple(l.color),
                 "name": l.name} for l in cs_labels if l.trainId not in (255, -1)]
    assert CITYSCAPES_CATEGORIES == sorted(expected, key=lambda c: c["trainId"])
    meta = _get_builtin_metadata("cityscapes")
    assert meta["thing_classes"] == THING_NAMES and len(meta["stuff_classes"]) == 19


def test_instances_from_png_match_the_instance_ids(cityscapes):
    records = load_cityscapes_instances(*dirs(cityscapes), from_json=False, to_polygons=False)
    assert [r["image_id"] for r in records] == [f"{stem}_leftImg8bit.png" for _, stem in IMAGES]
    for record, (city, stem) in zip(records, IMAGES):
        ids = instance_png(cityscapes, city, stem).astype(np.int64)
        assert (record["height"], record["width"]) == ids.shape
        expected = {}
        for pixel_id in np.unique(ids[ids >= 24]):
            label_id = pixel_id // 1000 if pixel_id >= 1000 else pixel_id
            name = next(l.name for l in cs_labels if l.id == label_id)
            if name in THING_NAMES:
                expected[int(pixel_id)] = (THING_NAMES.index(name), int(pixel_id < 1000), ids == pixel_id)
        assert len(record["annotations"]) == len(expected)
        for annotation, (category, crowd, mask) in zip(record["annotations"], expected.values()):
            assert (annotation["category_id"], annotation["iscrowd"]) == (category, crowd)
            np.testing.assert_array_equal(mask_util.decode(annotation["segmentation"]), mask)
            ys, xs = np.nonzero(mask)
            assert annotation["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_first_image_content(cityscapes):
    record = load_cityscapes_instances(*dirs(cityscapes), from_json=False, to_polygons=False)[0]
    categories = sorted((THING_NAMES[a["category_id"]], a["iscrowd"]) for a in record["annotations"])
    assert categories == [("car", 0), ("car", 0), ("car", 1), ("person", 0)]  # no caravan, no deleted car
    first_car = next(a for a in record["annotations"] if a["bbox"][0] == 10)
    # the second car covers the first one's right part
    assert mask_util.area(first_car["segmentation"]) < 31 * 21


@pytest.mark.parametrize("to_polygons", [True, False])
def test_json_and_png_sources_agree(cityscapes, to_polygons):
    from_json = load_cityscapes_instances(*dirs(cityscapes), from_json=True, to_polygons=to_polygons)
    from_png = load_cityscapes_instances(*dirs(cityscapes), from_json=False, to_polygons=to_polygons)
    assert from_json == from_png


def test_polygons_cover_the_instances(cityscapes):
    record = load_cityscapes_instances(*dirs(cityscapes))[0]
    ids = instance_png(cityscapes, "aachen", "aachen_000000_000019")
    for annotation in record["annotations"]:
        rle = mask_util.merge(mask_util.frPyObjects(annotation["segmentation"], H, W))
        drawn = mask_util.decode(rle).astype(bool)
        x0, y0, x1, y1 = (int(v) for v in annotation["bbox"])
        values, counts = np.unique(ids[y0:y1, x0:x1], return_counts=True)
        truth = ids == values[np.argmax(counts)]
        iou = (drawn & truth).sum() / (drawn | truth).sum()
        assert iou > 0.95  # outlines follow the pixel edges (diagonal steps are ties)


def test_semantic(cityscapes):
    records = load_cityscapes_semantic(*dirs(cityscapes))
    assert len(records) == 2
    for record in records:
        assert record["sem_seg_file_name"].endswith("_gtFine_labelTrainIds.png")
        assert os.path.isfile(record["sem_seg_file_name"]) and (record["height"], record["width"]) == (H, W)
        labels = np.asarray(Image.open(record["sem_seg_file_name"]))
        assert set(np.unique(labels)) <= set(range(19)) | {255}


def test_errors(cityscapes, tmp_path):
    bad_root = tmp_path / "bad"
    (bad_root / "gtFine" / "train" / "x").mkdir(parents=True)
    (bad_root / "leftImg8bit" / "train" / "x").mkdir(parents=True)
    Image.new("RGB", (W, H)).save(bad_root / "leftImg8bit" / "train" / "x" / "x_0_1_leftImg8bit.png")
    json_file = bad_root / "gtFine" / "train" / "x" / "x_0_1_gtFine_polygons.json"
    json_file.write_text(json.dumps({"imgHeight": H, "imgWidth": W,
                                     "objects": [{"label": "road", "polygon": rect(0, 0, 5, 5)},
                                                 {"label": "spaceship", "polygon": rect(0, 0, 5, 5)}]}))
    with pytest.raises(ValueError, match=r"x_0_1_gtFine_polygons.json: object 1 has the unknown label 'spaceship'"):
        load_cityscapes_instances(*dirs(bad_root))
    json_file.write_text(json.dumps({"imgWidth": W, "objects": []}))
    with pytest.raises(ValueError, match="polygons.json: 'imgHeight'"):
        load_cityscapes_instances(*dirs(bad_root))
    with pytest.raises(FileNotFoundError, match="labelTrainIds.png does not exist"):
        json_file.write_text(json.dumps({"imgHeight": H, "imgWidth": W, "objects": []}))
        load_cityscapes_semantic(*dirs(bad_root))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cityscapes_instances(str(tmp_path / "nothing"), str(tmp_path / "nothing"))


def test_panoptic(cityscapes):
    gt_root = cityscapes / "gtFine"
    with contextlib.redirect_stdout(io.StringIO()):
        convert2panoptic(str(gt_root), str(gt_root), setNames=["train"])
    meta = _panoptic_meta()
    records = load_cityscapes_panoptic(str(cityscapes / "leftImg8bit" / "train"),
                                       str(gt_root / "cityscapes_panoptic_train"),
                                       str(gt_root / "cityscapes_panoptic_train.json"), meta)
    assert [r["image_id"] for r in records] == [stem for _, stem in IMAGES]
    first = records[0]
    assert first["sem_seg_file_name"].endswith("aachen_000000_000019_gtFine_labelTrainIds.png")
    names = sorted(meta["stuff_classes"][s["category_id"]] for s in first["segments_info"])
    assert names == ["car", "car", "car", "person", "road", "sky"]  # train ids, crowd car included
    png = np.asarray(Image.open(first["pan_seg_file_name"]), dtype=np.int64)
    ids = png[..., 0] + 256 * png[..., 1] + 65536 * png[..., 2]
    for segment in first["segments_info"]:
        assert int((ids == segment["id"]).sum()) == segment["area"]
