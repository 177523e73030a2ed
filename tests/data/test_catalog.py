"""DatasetCatalog / MetadataCatalog / Metadata, the built-in metadata tables and the built-in
registrations (catalog.py, datasets/builtin.py, datasets/builtin_meta.py)."""
import copy
import logging
import os
import pickle

import pytest

from detzoo.data import catalog as catalog_module
from detzoo.data.catalog import DatasetCatalog, Metadata, MetadataCatalog, register_lazy_metadata
from detzoo.data.datasets import builtin
from detzoo.data.datasets import builtin_meta as bm


@pytest.fixture
def empty_catalogs():
    """Run a test against empty catalogs, then put the registered datasets back."""
    saved = (dict(DatasetCatalog.data), dict(MetadataCatalog.data), dict(catalog_module._LAZY_METADATA))
    DatasetCatalog.clear()
    MetadataCatalog.clear()
    catalog_module._LAZY_METADATA.clear()
    try:
        yield
    finally:
        DatasetCatalog.clear()
        MetadataCatalog.clear()
        catalog_module._LAZY_METADATA.clear()
        DatasetCatalog.update(saved[0])
        MetadataCatalog.update(saved[1])
        catalog_module._LAZY_METADATA.update(saved[2])


# ------------------------------------------------------------------------- DatasetCatalog
class TestDatasetCatalog:
    def test_register_get_list_remove(self, empty_catalogs):
        calls = []
        DatasetCatalog.register("a", lambda: calls.append(1) or [{"x": 1}])
        assert calls == []  # registering does not load
        assert DatasetCatalog.get("a") == [{"x": 1}]
        assert calls == [1]
        assert DatasetCatalog.list() == ["a"]
        assert "a" in str(DatasetCatalog)
        DatasetCatalog.remove("a")
        assert DatasetCatalog.list() == []

    def test_errors_name_dataset_and_list_registered(self, empty_catalogs):
        DatasetCatalog.register("first", list)
        DatasetCatalog.register("second", list)
        with pytest.raises(KeyError, match=r"'missing' is not registered.*first, second"):
            DatasetCatalog.get("missing")
        with pytest.raises(KeyError, match=r"'missing'.*first, second"):
            DatasetCatalog.remove("missing")
        with pytest.raises(ValueError, match="'first' is already registered"):
            DatasetCatalog.register("first", list)
        with pytest.raises(TypeError, match="'third'.*callable.*list"):
            DatasetCatalog.register("third", [1, 2])
        with pytest.raises(TypeError, match="non-empty str"):
            DatasetCatalog.register("", list)

    def test_clear(self, empty_catalogs):
        DatasetCatalog.register("a", list)
        DatasetCatalog.clear()
        assert DatasetCatalog.list() == []


# ------------------------------------------------------------------------------- Metadata
class TestMetadata:
    def test_attributes_set_get_as_dict(self):
        meta = Metadata(name="m")
        assert meta.set(thing_classes=["a", "b"], evaluator_type="coco") is meta
        meta.ignore_label = 255
        assert meta.thing_classes == ["a", "b"] and meta.ignore_label == 255
        assert meta.get("thing_classes") == ["a", "b"]
        assert meta.get("stuff_classes") is None and meta.get("stuff_classes", 7) == 7
        d = meta.as_dict()
        assert d == {"name": "m", "thing_classes": ["a", "b"], "evaluator_type": "coco", "ignore_label": 255}
        d["ignore_label"] = 0
        assert meta.ignore_label == 255

    def test_conflicting_value_raises_naming_key(self):
        meta = Metadata(name="my_set").set(thing_classes=["a"])
        meta.thing_classes = ["a"]  # the same value again is fine
        meta.thing_classes = ("a",)  # a tuple equal item by item too (JSON vs constants)
        with pytest.raises(ValueError, match=r"'thing_classes'.*'my_set'.*\['a'\].*\['b'\]"):
            meta.thing_classes = ["b"]
        with pytest.raises(ValueError, match="thing_classes"):
            meta.set(thing_classes=["a", "b"])

    def test_missing_attribute_message(self):
        meta = Metadata(name="ds").set(json_file="x.json")
        with pytest.raises(AttributeError, match=r"'thing_classes'.*'ds'.*json_file"):
            meta.thing_classes
        with pytest.raises(AttributeError, match="metadata is empty"):
            Metadata(name="empty").thing_classes
        assert not hasattr(meta, "stuff_classes")

    def test_renamed_keys(self, caplog):
        meta = Metadata(name="old")
        with caplog.at_level(logging.WARNING):
            meta.class_names = ["x"]
        assert meta.thing_classes == ["x"] and meta.class_names == ["x"]
        assert "renamed" in caplog.text

    def test_pickle_and_copy(self):
        meta = Metadata(name="p").set(thing_classes=["a"], thing_dataset_id_to_contiguous_id={3: 0})
        for clone in (pickle.loads(pickle.dumps(meta)), copy.deepcopy(meta), copy.copy(meta)):
            assert clone.as_dict() == meta.as_dict()

    def test_numpy_values_do_not_break_comparison(self):
        import numpy as np

        meta = Metadata(name="np").set(mean=np.zeros(3))
        with pytest.raises(ValueError, match="mean"):
            meta.mean = np.ones(3)


class TestMetadataCatalog:
    def test_get_creates_singleton(self, empty_catalogs):
        meta = MetadataCatalog.get("x")
        assert meta.name == "x" and MetadataCatalog.get("x") is meta
        assert MetadataCatalog.list() == ["x"]
        MetadataCatalog.remove("x")
        assert MetadataCatalog.get("x") is not meta
        with pytest.raises(KeyError, match="'nope'.*x"):
            MetadataCatalog.remove("nope")
        with pytest.raises(TypeError):
            MetadataCatalog.get("")

    def test_lazy_metadata(self, empty_catalogs):
        calls = []

        def loader():
            calls.append(1)
            return {"thing_classes": ["a", "b"], "unrelated": 1}

        register_lazy_metadata("lazy", ["thing_classes", "class_image_count"], loader)
        meta = MetadataCatalog.get("lazy").set(json_file="f.json")
        assert calls == []
        assert meta.thing_classes == ["a", "b"]
        assert meta.get("class_image_count") is None  # not provided: plainly absent
        assert not hasattr(meta, "unrelated")  # only the declared keys are taken
        assert calls == [1]  # resolved once

    def test_lazy_metadata_missing_file(self, empty_catalogs, tmp_path):
        missing = str(tmp_path / "none.json")

        def loader():
            with open(missing) as f:
                return {"thing_classes": f.read()}

        register_lazy_metadata("lazy2", ["thing_classes"], loader)
        meta = MetadataCatalog.get("lazy2")
        assert meta.get("thing_classes", "default") == "default"
        with pytest.raises(AttributeError, match="none.json"):
            meta.thing_classes

    def test_explicit_set_cancels_lazy(self, empty_catalogs):
        register_lazy_metadata("lazy3", ["thing_classes"], lambda: pytest.fail("loader must not run"))
        meta = MetadataCatalog.get("lazy3").set(thing_classes=["z"])
        assert meta.thing_classes == ["z"]


# -------------------------------------------------------------------------- builtin_meta
def test_coco_categories_match_torchvision():
    # torchvision's COCO list is indexed by dataset id, with "N/A" for the unused ids.
    from torchvision.models._meta import _COCO_CATEGORIES

    things = [c for c in bm.COCO_CATEGORIES if c["isthing"]]
    expected = [(i, name) for i, name in enumerate(_COCO_CATEGORIES) if i > 0 and name != "N/A"]
    assert [(c["id"], c["name"]) for c in things] == expected


def test_coco_metadata_tables():
    ids = [c["id"] for c in bm.COCO_CATEGORIES]
    assert len(ids) == 133 and len(set(ids)) == 133 and ids == sorted(ids)
    assert all(len(c["color"]) == 3 and all(0 <= v <= 255 for v in c["color"]) for c in bm.COCO_CATEGORIES)

    coco = bm._get_builtin_metadata("coco")
    assert len(coco["thing_classes"]) == 80 and len(coco["thing_colors"]) == 80
    assert coco["thing_dataset_id_to_contiguous_id"][1] == 0 and coco["thing_dataset_id_to_contiguous_id"][90] == 79

    separated = bm._get_builtin_metadata("coco_panoptic_separated")
    assert len(separated["stuff_classes"]) == 54 and separated["stuff_classes"][0] == "things"
    assert separated["stuff_dataset_id_to_contiguous_id"][0] == 0
    assert sorted(separated["stuff_dataset_id_to_contiguous_id"].values()) == list(range(54))
    assert "sky" in separated["stuff_classes"] and "wall" in separated["stuff_classes"]  # suffixes removed

    standard = bm._get_builtin_metadata("coco_panoptic_standard")
    contiguous = {**standard["thing_dataset_id_to_contiguous_id"], **standard["stuff_dataset_id_to_contiguous_id"]}
    assert sorted(contiguous.values()) == list(range(133)) and len(standard["stuff_classes"]) == 133
    with pytest.raises(KeyError, match="no built-in metadata"):
        bm._get_builtin_metadata("imagenet")


def test_person_keypoint_metadata():
    names = bm.COCO_PERSON_KEYPOINT_NAMES
    assert len(names) == 17 and names[0] == "nose"
    assert len(bm.COCO_PERSON_KEYPOINT_FLIP_MAP) == 8
    for left, right in bm.COCO_PERSON_KEYPOINT_FLIP_MAP:
        assert left.replace("left_", "right_") == right and left in names and right in names
    for a, b, color in bm.KEYPOINT_CONNECTION_RULES:
        assert a in names and b in names and len(color) == 3
    person = bm._get_builtin_metadata("coco_person")
    assert person["thing_classes"] == ["person"] and person["keypoint_names"] == names


# ------------------------------------------------------------------------------ builtin
EXPECTED_NAMES = (
    ["coco_2014_train", "coco_2014_val", "coco_2014_minival", "coco_2014_valminusminival",
     "coco_2017_train", "coco_2017_val", "coco_2017_test", "coco_2017_test-dev",
     "keypoints_coco_2017_train", "keypoints_coco_2017_val", "keypoints_coco_2014_minival",
     "coco_2017_train_panoptic", "coco_2017_val_panoptic",
     "coco_2017_train_panoptic_separated", "coco_2017_val_panoptic_separated", "coco_2017_val_panoptic_stuffonly",
     "lvis_v0.5_train", "lvis_v0.5_val", "lvis_v1_train", "lvis_v1_val", "lvis_v0.5_val_cocofied",
     "cityscapes_fine_panoptic_train", "voc_2007_test"]
    + [f"cityscapes_fine_{task}_{split}" for task in ("instance_seg", "sem_seg") for split in ("train", "val", "test")]
    + [f"voc_{year}_{split}" for year in (2007, 2012) for split in ("trainval", "train", "val")]
    + [f"shapes_{split}" for split in ("train", "val")]
    + [f"shapes_{kind}_{split}" for kind in ("keypoints", "sem_seg", "panoptic") for split in ("train", "val")]
    + [f"shapes_panoptic_{split}_{v}" for split in ("train", "val") for v in ("separated", "stuffonly")]
)


def test_builtin_names_are_registered():
    registered = set(DatasetCatalog.list())
    assert not [name for name in EXPECTED_NAMES if name not in registered]


def test_registering_reads_no_file(empty_catalogs, tmp_path):
    root = str(tmp_path / "no_such_folder")
    builtin.register_all_coco(root)
    builtin.register_all_lvis(root)
    builtin.register_all_cityscapes(root)
    builtin.register_all_pascal_voc(root)
    builtin.register_all_shapes(os.path.join(root, "shapes"))
    assert not os.path.exists(root)  # nothing was read, generated or created
    meta = MetadataCatalog.get("coco_2017_val")
    assert meta.json_file == os.path.join(root, "coco/annotations/instances_val2017.json")
    assert meta.image_root == os.path.join(root, "coco/val2017") and meta.evaluator_type == "coco"
    assert len(meta.thing_classes) == 80
    assert MetadataCatalog.get("keypoints_coco_2017_val").keypoint_flip_map == bm.COCO_PERSON_KEYPOINT_FLIP_MAP
    separated = MetadataCatalog.get("coco_2017_val_panoptic_separated")
    assert separated.sem_seg_root == os.path.join(root, "coco/panoptic_stuff_val2017")
    assert separated.evaluator_type == "coco_panoptic_seg" and separated.ignore_label == 255
    assert MetadataCatalog.get("coco_2017_val_panoptic").label_divisor == 1000
    assert MetadataCatalog.get("voc_2012_val").evaluator_type == "pascal_voc"
    assert MetadataCatalog.get("cityscapes_fine_sem_seg_val").evaluator_type == "cityscapes_sem_seg"
    assert MetadataCatalog.get("lvis_v0.5_val_cocofied").thing_classes == meta.thing_classes
    # LVIS class names live in the (absent) annotation file: absent, with a reason.
    lvis = MetadataCatalog.get("lvis_v1_val")
    assert lvis.evaluator_type == "lvis" and lvis.get("thing_classes") is None
    with pytest.raises(AttributeError, match="lvis_v1_val.json"):
        lvis.thing_classes
    with pytest.raises(FileNotFoundError, match="instances_val2017.json"):
        DatasetCatalog.get("coco_2017_val")
