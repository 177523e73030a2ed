"""DatasetMapper: reading, augmenting and packing one record, against hand-computed targets."""
import copy
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from detzoo.config import get_cfg
from detzoo.data import DatasetMapper
from detzoo.data import detection_utils as utils
from detzoo.data import transforms as T
from detzoo.data.catalog import MetadataCatalog
from detzoo.structures import BitMasks, BoxMode, PolygonMasks

H, W = 40, 60


@pytest.fixture
def record(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "img.png")
    labels = np.zeros((H, W), np.uint8)
    labels[10:20, 5:30] = 7
    Image.fromarray(labels).save(tmp_path / "seg.png")
    return {
        "file_name": str(tmp_path / "img.png"),
        "image_id": 42,
        "height": H,
        "width": W,
        "sem_seg_file_name": str(tmp_path / "seg.png"),
        "annotations": [
            {"bbox": [5, 10, 25, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2, "iscrowd": 0,
             "segmentation": [[5, 10, 30, 10, 30, 20, 5, 20]],
             "keypoints": [6, 11, 2, 29, 11, 2, 10, 19, 1]},
            {"bbox": [40, 0, 60, 30], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1, "iscrowd": 1,
             "segmentation": [[40, 0, 60, 0, 60, 30]], "keypoints": [0, 0, 0] * 3},
            {"bbox": [50, 30, 58, 38], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,
             "segmentation": [[50, 30, 58, 30, 58, 38, 50, 38]], "keypoints": [51, 31, 2, 57, 31, 2, 0, 0, 0]},
        ],
    }, image, labels


def test_train_mapping_with_a_flip(record):
    record, image, labels = record
    original = copy.deepcopy(record)
    mapper = DatasetMapper(True, augmentations=[T.HFlipTransform(W)], image_format="BGR",
                           use_instance_mask=True, use_keypoint=True, keypoint_hflip_indices=[1, 0, 2])
    out = mapper(record)
    assert record == original  # the input record is not modified
    assert out["image"].shape == (3, H, W) and out["image"].dtype == torch.uint8
    torch.testing.assert_close(out["image"], torch.from_numpy(image[:, ::-1, ::-1].transpose(2, 0, 1).copy()))
    assert out["sem_seg"].dtype == torch.int64
    torch.testing.assert_close(out["sem_seg"], torch.from_numpy(labels[:, ::-1].astype(np.int64)))
    instances = out["instances"]
    # the crowd annotation is dropped; x -> 60 - x
    assert instances.gt_classes.tolist() == [2, 0]
    torch.testing.assert_close(instances.gt_boxes.tensor, torch.tensor([[30.0, 10, 55, 20], [2, 30, 10, 38]]))
    assert isinstance(instances.gt_masks, PolygonMasks)
    np.testing.assert_allclose(instances.gt_masks.polygons[0][0], [55, 10, 30, 10, 30, 20, 55, 20])
    # left/right keypoints swap after the flip; the third one stays
    expected_keypoints = torch.tensor([[31.0, 11, 2], [54, 11, 2], [50, 19, 1]])
    torch.testing.assert_close(instances.gt_keypoints.tensor[0], expected_keypoints)
    assert "annotations" not in out and "sem_seg_file_name" not in out


def test_options_drop_masks_and_keypoints_and_bitmask_format(record):
    record, _, _ = record
    out = DatasetMapper(True, augmentations=[], image_format="RGB")(record)
    assert not out["instances"].has("gt_masks") and not out["instances"].has("gt_keypoints")
    out = DatasetMapper(True, augmentations=[], image_format="RGB", use_instance_mask=True,
                        instance_mask_format="bitmask")(record)
    assert isinstance(out["instances"].gt_masks, BitMasks)
    expected = np.zeros((H, W), bool)
    expected[10:20, 5:30] = True
    np.testing.assert_array_equal(out["instances"].gt_masks.tensor[0].numpy(), expected)


def test_inference_drops_annotations(record):
    record, image, _ = record
    out = DatasetMapper(False, augmentations=[T.ResizeTransform(H, W, 2 * H, 2 * W)], image_format="RGB")(record)
    assert "annotations" not in out and "instances" not in out
    assert out["image"].shape == (3, 2 * H, 2 * W) and out["sem_seg"].shape == (2 * H, 2 * W)
    assert (out["height"], out["width"]) == (H, W)  # the original size, for rescaling outputs


def test_crop_recomputes_boxes_and_filters_empty_instances(record):
    record, _, _ = record
    # the window x in [10, 40): the first instance is cut, the third one is outside
    crop = T.CropTransform(10, 0, 30, H, W, H)
    triangle = [[10, 10, 30, 10, 10, 30]]  # a crop at x = 25 leaves a tight box ending at y = 15
    record["annotations"][0]["segmentation"] = triangle
    record["annotations"][0]["bbox"] = [10, 10, 20, 20]
    mapper = DatasetMapper(True, augmentations=[crop, T.HFlipTransform(30)], image_format="BGR",
                           use_instance_mask=True, recompute_boxes=True)
    instances = mapper(record)["instances"]
    assert instances.gt_classes.tolist() == [2]
    # crop: x -> x - 10, then flip x -> 30 - x; the triangle keeps x in [0, 20] -> [10, 30]
    torch.testing.assert_close(instances.gt_boxes.tensor, torch.tensor([[10.0, 10, 30, 30]]))
    crop_right = T.CropTransform(25, 0, 35, H, W, H)
    instances = DatasetMapper(True, augmentations=[crop_right], image_format="BGR", use_instance_mask=True,
                              recompute_boxes=True)(record)["instances"]
    # the triangle's part right of x = 25 has its tight box at y <= 15, clipped boxes would say 30
    torch.testing.assert_close(instances.gt_boxes.tensor[0], torch.tensor([0.0, 10, 5, 15]))
    with pytest.raises(ValueError, match="recompute_boxes"):
        DatasetMapper(True, augmentations=[], image_format="BGR", recompute_boxes=True)


def test_palette_sem_seg_keeps_class_ids(record, tmp_path):
    record, _, labels = record
    palette = Image.fromarray(labels, mode="P")
    palette.putpalette([0, 0, 0] + [200, 10, 10] * 255)
    palette.save(tmp_path / "palette.png")
    record["sem_seg_file_name"] = str(tmp_path / "palette.png")
    out = DatasetMapper(True, augmentations=[], image_format="BGR")(record)
    torch.testing.assert_close(out["sem_seg"], torch.from_numpy(labels.astype(np.int64)))
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "rgb_seg.png")
    record["sem_seg_file_name"] = str(tmp_path / "rgb_seg.png")
    with pytest.raises(ValueError, match=r"rgb_seg.png.*'RGB'"):
        DatasetMapper(True, augmentations=[], image_format="BGR")(record)


def test_errors_name_file_and_image_id(record, tmp_path):
    record, _, _ = record
    mapper = DatasetMapper(True, augmentations=[], image_format="BGR")
    missing = dict(record, file_name=str(tmp_path / "nope.jpg"))
    with pytest.raises(FileNotFoundError, match=r"image_id 42.*nope.jpg"):
        mapper(missing)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(OSError, match=r"image_id 42.*broken.jpg"):
        mapper(dict(record, file_name=str(tmp_path / "broken.jpg")))
    with pytest.raises(utils.SizeMismatchError, match="img.png"):
        mapper(dict(record, width=W + 1))
    with pytest.raises(ValueError, match="instance_mask_format"):
        DatasetMapper(True, augmentations=[], image_format="BGR", instance_mask_format="rle")
    with pytest.raises(ValueError, match="format"):
        DatasetMapper(True, augmentations=[], image_format="bgr")


def test_precomputed_proposals(record):
    record, _, _ = record
    record["proposal_boxes"] = np.array([[0, 0, 10, 10], [20, 5, 30, 15], [1, 1, 2, 2]], dtype=np.float32)
    record["proposal_objectness_logits"] = np.array([0.9, 0.5, 0.1], dtype=np.float32)
    record["proposal_bbox_mode"] = BoxMode.XYXY_ABS
    out = DatasetMapper(False, augmentations=[T.HFlipTransform(W)], image_format="BGR",
                        precomputed_proposal_topk=2)(record)
    expected = torch.tensor([[50.0, 0, 60, 10], [30, 5, 40, 15]])
    torch.testing.assert_close(out["proposals"].proposal_boxes.tensor, expected)
    assert "proposal_boxes" not in out


class _ShiftInPlace(T.Transform):
    """Moves coordinates by one pixel, writing into the array it is given."""

    def apply_image(self, img):
        return img

    def apply_coords(self, coords):
        coords += 1.0
        return coords


def _equal(a, b):
    """Deep equality of records whose values may be numpy arrays."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


@pytest.mark.parametrize("is_train", [True, False])
def test_record_with_arrays_survives_an_in_place_transform(record, is_train):
    record, _, _ = record
    for obj in record["annotations"]:  # numpy values where lists were: the mapper must not write into them
        obj["segmentation"] = [np.array(p, dtype=np.float64) for p in obj["segmentation"]]
        obj["keypoints"] = np.array(obj["keypoints"], dtype=np.float64)
    record["proposal_boxes"] = np.array([[0, 0, 10, 10], [20, 5, 30, 15]], dtype=np.float64)
    record["proposal_objectness_logits"] = np.array([0.9, 0.5], dtype=np.float32)
    record["proposal_bbox_mode"] = BoxMode.XYXY_ABS
    original = copy.deepcopy(record)
    mapper = DatasetMapper(is_train, augmentations=[_ShiftInPlace()], image_format="BGR", use_instance_mask=True,
                           use_keypoint=True, precomputed_proposal_topk=2)
    out = mapper(record)
    assert _equal(record, original)
    torch.testing.assert_close(out["proposals"].proposal_boxes.tensor, torch.tensor([[1.0, 1, 11, 11], [21, 6, 31, 16]]))
    if is_train:
        torch.testing.assert_close(out["instances"].gt_boxes.tensor, torch.tensor([[6.0, 11, 31, 21], [51, 31, 59, 39]]))
    mapper(record)  # mapping again gives the same
    assert _equal(record, original)


def test_from_config():
    name = f"test_mapper_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(keypoint_names=["l", "r", "c"], keypoint_flip_map=[("l", "r")])
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (name,)
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.KEYPOINT_ON = True
    cfg.MODEL.LOAD_PROPOSALS = True
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.MASK_FORMAT = "bitmask"
    train = DatasetMapper(cfg, is_train=True)
    assert isinstance(train.augmentations.augs[0], T.RandomCrop)
    assert [type(a) for a in train.augmentations.augs[1:]] == [T.ResizeShortestEdge, T.RandomFlip]
    assert train.recompute_boxes and train.use_instance_mask and train.instance_mask_format == "bitmask"
    assert train.keypoint_hflip_indices == [1, 0, 2] and train.proposal_topk == 2000
    test = DatasetMapper(cfg, False)
    assert not test.recompute_boxes and test.proposal_topk == 1000
    assert [type(a) for a in test.augmentations.augs] == [T.ResizeShortestEdge]
    assert DatasetMapper(cfg, True, image_format="RGB").image_format == "RGB"
