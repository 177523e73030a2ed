"""detection_utils: image reading, annotations through transforms, Instances building."""
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

from detzoo.config import get_cfg
from detzoo.data import detection_utils as utils
from detzoo.data import transforms as T
from detzoo.data.catalog import MetadataCatalog
from detzoo.structures import BitMasks, Boxes, BoxMode, Instances, PolygonMasks, RotatedBoxes, polygons_to_bitmask

KEYPOINT_NAMES = ["nose", "left_eye", "right_eye", "left_hand", "right_hand"]
FLIP_MAP = [("left_eye", "right_eye"), ("left_hand", "right_hand")]
FLIP_INDICES = [0, 2, 1, 4, 3]  # by hand from the two lists above


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)


def save_png(path, array, exif_orientation=None):
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[274] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    Image.fromarray(array).save(path, format="PNG", **kwargs)
    return str(path)


def new_dataset_name(**metadata):
    name = f"test_detection_utils_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(**metadata)
    return name


# ---------------------------------------------------------------------------- reading
class TestReadImage:
    def test_formats(self, tmp_path, rgb):
        path = save_png(tmp_path / "a.png", rgb)
        np.testing.assert_array_equal(utils.read_image(path, "RGB"), rgb)
        np.testing.assert_array_equal(utils.read_image(path, "BGR"), rgb[:, :, ::-1])
        np.testing.assert_array_equal(utils.read_image(path), rgb)
        grey = utils.read_image(path, "L")
        assert grey.shape == (6, 8, 1)
        np.testing.assert_array_equal(grey[:, :, 0], np.asarray(Image.fromarray(rgb).convert("L")))
        yuv = utils.read_image(path, "YUV-BT.601")
        r, g, b = (rgb / 255.0).transpose(2, 0, 1)
        np.testing.assert_allclose(yuv[..., 0], 0.299 * r + 0.587 * g + 0.114 * b)
        np.testing.assert_allclose(yuv[..., 1], -0.14713 * r - 0.28886 * g + 0.436 * b)
        np.testing.assert_allclose(utils.convert_image_to_rgb(yuv, "YUV-BT.601"), rgb, atol=0.05)

    def test_convert_image_to_rgb(self, tmp_path, rgb):
        path = save_png(tmp_path / "a.png", rgb)
        np.testing.assert_array_equal(utils.convert_image_to_rgb(utils.read_image(path, "BGR"), "BGR"), rgb)
        np.testing.assert_array_equal(utils.convert_image_to_rgb(torch.from_numpy(rgb), "RGB"), rgb)
        grey = utils.read_image(path, "L")
        np.testing.assert_array_equal(utils.convert_image_to_rgb(grey, "L"), np.repeat(grey, 3, axis=2))

    @pytest.mark.parametrize("orientation,undo", [
        (3, lambda a: a[::-1, ::-1]),          # stored upside down
        (6, lambda a: np.rot90(a, -1)),        # stored rotated 90 degrees counter-clockwise
        (8, lambda a: np.rot90(a, 1)),
        (2, lambda a: a[:, ::-1]),
    ])
    def test_exif_orientation(self, tmp_path, rgb, orientation, undo):
        path = save_png(tmp_path / "a.png", rgb, exif_orientation=orientation)
        np.testing.assert_array_equal(utils.read_image(path, "RGB"), undo(rgb))

    def test_errors_name_the_file(self, tmp_path, rgb):
        with pytest.raises(FileNotFoundError, match="missing.png"):
            utils.read_image(str(tmp_path / "missing.png"))
        garbage = tmp_path / "garbage.jpg"
        garbage.write_bytes(b"not an image at all")
        with pytest.raises(OSError, match="garbage.jpg"):
            utils.read_image(str(garbage), "BGR")
        with pytest.raises(ValueError, match="'RGB48'"):
            utils.read_image(save_png(tmp_path / "a.png", rgb), "RGB48")

    def test_check_image_size(self, rgb):
        record = {"file_name": "/data/img_7.jpg", "width": 8, "height": 6}
        utils.check_image_size(record, rgb)
        with pytest.raises(utils.SizeMismatchError, match=r"img_7.jpg.*8x6.*9x6"):
            utils.check_image_size({"file_name": "/data/img_7.jpg", "width": 9, "height": 6}, rgb)
        filled = {"file_name": "x"}
        utils.check_image_size(filled, rgb)
        assert (filled["width"], filled["height"]) == (8, 6)


# ----------------------------------------------------------------- instance annotations
def make_annotation():
    return {
        "id": 11,
        "bbox": [10.0, 20.0, 30.0, 10.0],
        "bbox_mode": BoxMode.XYWH_ABS,
        "category_id": 3,
        "segmentation": [[10.0, 20.0, 40.0, 20.0, 40.0, 30.0, 10.0, 30.0]],
        "keypoints": [12.0, 22.0, 2, 15.0, 25.0, 2, 35.0, 25.0, 1, 11.0, 29.0, 2, 39.0, 29.0, 0],
    }


class TestTransformInstanceAnnotations:
    def test_flip_then_resize_against_hand_computation(self):
        w, h = 50, 40
        transforms = T.TransformList([T.HFlipTransform(w), T.ResizeTransform(h, w, 2 * h, w // 2)])
        anno = utils.transform_instance_annotations(make_annotation(), transforms, (2 * h, w // 2),
                                                    keypoint_hflip_indices=FLIP_INDICES)
        # flip: x -> 50 - x, then x * 0.5, y * 2
        np.testing.assert_allclose(anno["bbox"], [5.0, 40.0, 20.0, 60.0])
        assert anno["bbox_mode"] == BoxMode.XYXY_ABS
        np.testing.assert_allclose(anno["segmentation"][0], [20, 40, 5, 40, 5, 60, 20, 60])
        kp = anno["keypoints"]
        # point i after the flip is the mirrored point FLIP_INDICES[i]; unlabeled points are zeroed
        np.testing.assert_allclose(kp, [[19, 44, 2], [7.5, 50, 1], [17.5, 50, 2], [0, 0, 0], [19.5, 58, 2]])

    def test_crop_clips_box_and_polygon(self):
        crop = T.CropTransform(25, 0, 25, 40, 50, 40)
        anno = utils.transform_instance_annotations(make_annotation(), [crop], (40, 25))
        np.testing.assert_allclose(anno["bbox"], [0.0, 20.0, 15.0, 30.0])
        polygon = anno["segmentation"][0].reshape(-1, 2)
        assert polygon[:, 0].min() == 0 and polygon[:, 0].max() == 15
        # keypoints left of the crop leave the image and become unlabeled (x = y = v = 0)
        np.testing.assert_allclose(anno["keypoints"], [[0, 0, 0], [0, 0, 0], [10, 25, 1], [0, 0, 0], [0, 0, 0]])

    @pytest.mark.parametrize("compressed", [True, False])
    def test_rle_moves_with_the_image(self, compressed):
        mask = np.zeros((40, 50), np.uint8)
        mask[5:25, 3:17] = 1
        mask[30:, 40:] = 1
        if compressed:
            rle = mask_util.encode(np.asfortranarray(mask))
        else:  # COCO's uncompressed form for crowd regions: run lengths in column-major order
            runs, flat, current, count = [], mask.flatten(order="F"), 0, 0
            for value in flat:
                if value != current:
                    runs.append(count)
                    current, count = value, 0
                count += 1
            runs.append(count)
            rle = {"size": [40, 50], "counts": runs}
        anno = make_annotation()
        anno.pop("keypoints")
        anno["segmentation"] = rle
        anno = utils.transform_instance_annotations(anno, [T.HFlipTransform(50)], (40, 50))
        np.testing.assert_array_equal(anno["segmentation"], mask[:, ::-1])

    def test_errors(self):
        anno = make_annotation()
        with pytest.raises(ValueError, match="keypoint_hflip_indices"):
            utils.transform_instance_annotations(anno, [T.HFlipTransform(50)], (40, 50))
        with pytest.raises(ValueError, match="5 points but the metadata .* has 3"):
            utils.transform_instance_annotations(make_annotation(), [T.NoOpTransform()], (40, 50),
                                                 keypoint_hflip_indices=[0, 2, 1])
        bad = make_annotation()
        bad["segmentation"] = "polygon"
        with pytest.raises(ValueError, match="annotation 11.*str"):
            utils.transform_instance_annotations(bad, [T.NoOpTransform()], (40, 50))
        odd = make_annotation()
        odd["segmentation"] = [[1.0, 2.0, 3.0]]
        with pytest.raises(ValueError, match="annotation 11"):
            utils.transform_instance_annotations(odd, [T.NoOpTransform()], (40, 50))

    def test_two_flips_do_not_swap(self):
        flips = [T.HFlipTransform(50), T.HFlipTransform(50)]
        anno = utils.transform_instance_annotations(make_annotation(), flips, (40, 50),
                                                    keypoint_hflip_indices=FLIP_INDICES)
        original = np.reshape(make_annotation()["keypoints"], (-1, 3))
        np.testing.assert_allclose(anno["keypoints"][:4, :2], original[:4, :2])


# --------------------------------------------------------------------------- Instances
class TestAnnotationsToInstances:
    def annos(self):
        first = make_annotation()
        second = make_annotation()
        second.update(bbox=[1.0, 2.0, 5.0, 6.0], bbox_mode=BoxMode.XYXY_ABS, category_id=0,
                      segmentation=[[1.0, 2.0, 5.0, 2.0, 5.0, 6.0]])
        return [first, second]

    def test_polygon_masks_boxes_classes_keypoints(self):
        inst = utils.annotations_to_instances(self.annos(), (40, 50))
        torch.testing.assert_close(inst.gt_boxes.tensor, torch.tensor([[10.0, 20, 40, 30], [1, 2, 5, 6]]))
        assert inst.gt_classes.tolist() == [3, 0] and inst.gt_classes.dtype == torch.int64
        assert isinstance(inst.gt_masks, PolygonMasks) and len(inst.gt_masks) == 2
        assert inst.gt_keypoints.tensor.shape == (2, 5, 3)

    def test_bitmasks_from_polygons_rle_and_arrays(self):
        annos = self.annos()
        rle_mask = np.zeros((40, 50), np.uint8)
        rle_mask[3:9, 4:7] = 1
        annos.append({"bbox": [4, 3, 7, 9], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1,
                      "segmentation": mask_util.encode(np.asfortranarray(rle_mask))})
        annos.append({"bbox": [0, 0, 2, 2], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1,
                      "segmentation": np.eye(40, 50, dtype=np.uint8)})
        for anno in annos:
            anno.pop("keypoints", None)
        inst = utils.annotations_to_instances(annos, (40, 50), mask_format="bitmask")
        assert isinstance(inst.gt_masks, BitMasks) and inst.gt_masks.tensor.shape == (4, 40, 50)
        expected = polygons_to_bitmask([np.asarray(annos[0]["segmentation"][0])], 40, 50)
        np.testing.assert_array_equal(inst.gt_masks.tensor[0].numpy(), expected)
        np.testing.assert_array_equal(inst.gt_masks.tensor[2].numpy(), rle_mask.astype(bool))
        np.testing.assert_array_equal(inst.gt_masks.tensor[3].numpy(), np.eye(40, 50, dtype=bool))

    def test_empty_and_errors(self):
        inst = utils.annotations_to_instances([], (10, 10))
        assert inst.gt_boxes.tensor.shape == (0, 4) and len(inst.gt_classes) == 0
        with pytest.raises(ValueError, match="mask_format"):
            utils.annotations_to_instances(self.annos(), (40, 50), mask_format="rle")
        annos = self.annos()
        annos[0]["segmentation"] = {"size": [40, 50], "counts": b"0"}
        with pytest.raises(ValueError, match="bitmask"):
            utils.annotations_to_instances(annos, (40, 50), mask_format="polygon")

    def test_rotated(self):
        annos = [{"bbox": [10, 10, 4, 2, 30], "category_id": 1}, {"bbox": [-5, 10, 4, 2, 0], "category_id": 2}]
        inst = utils.annotations_to_instances_rotated(annos, (40, 50))
        assert isinstance(inst.gt_boxes, RotatedBoxes) and inst.gt_classes.tolist() == [1, 2]


def test_filter_empty_instances():
    inst = Instances((20, 20))
    inst.gt_boxes = Boxes(torch.tensor([[0, 0, 5, 5], [3, 3, 3, 8], [1, 1, 4, 4.0]]))
    inst.gt_masks = PolygonMasks([[np.array([0, 0, 5, 0, 5, 5.0])], [np.array([3, 3, 4, 3, 4, 8.0])], []])
    kept, mask = utils.filter_empty_instances(inst, return_mask=True)
    assert mask.tolist() == [True, False, False] and len(kept) == 1
    assert len(utils.filter_empty_instances(inst, by_mask=False)) == 2
    assert len(utils.filter_empty_instances(inst, by_box=False)) == 2
    with pytest.raises(ValueError, match="at least one"):
        utils.filter_empty_instances(inst, by_box=False, by_mask=False)


def test_transform_proposals():
    record = {
        "proposal_boxes": np.array([[0, 0, 10, 10], [5, 5, 100, 8], [2, 2, 2.5, 9], [1, 1, 3, 3]], dtype=np.float32),
        "proposal_objectness_logits": np.array([3.0, 2.0, 1.0, 0.0]),
        "proposal_bbox_mode": BoxMode.XYXY_ABS,
    }
    utils.transform_proposals(record, (20, 30), T.TransformList([T.ResizeTransform(10, 15, 20, 30)]),
                              proposal_topk=2, min_box_size=1.5)
    proposals = record["proposals"]
    assert set(record) == {"proposals"}
    # x2, clipped to 30 wide; the third box is 1 pixel wide after scaling and is dropped
    torch.testing.assert_close(proposals.proposal_boxes.tensor, torch.tensor([[0.0, 0, 20, 20], [10, 10, 30, 16]]))
    torch.testing.assert_close(proposals.objectness_logits, torch.tensor([3.0, 2.0]))


# --------------------------------------------------------------------------- metadata
def test_create_keypoint_hflip_indices():
    name = new_dataset_name(keypoint_names=KEYPOINT_NAMES, keypoint_flip_map=FLIP_MAP)
    assert utils.create_keypoint_hflip_indices(name) == FLIP_INDICES
    other = new_dataset_name(keypoint_names=KEYPOINT_NAMES, keypoint_flip_map=FLIP_MAP[:1])
    with pytest.raises(ValueError, match="keypoint_flip_map"):
        utils.create_keypoint_hflip_indices([name, other])
    bad = new_dataset_name(keypoint_names=KEYPOINT_NAMES, keypoint_flip_map=[("left_foot", "right_foot")])
    with pytest.raises(ValueError, match="left_foot"):
        utils.create_keypoint_hflip_indices(bad)


def test_check_metadata_consistency():
    a = new_dataset_name(thing_classes=["a", "b"])
    b = new_dataset_name(thing_classes=["a", "c"])
    utils.check_metadata_consistency("thing_classes", [a, a])
    utils.check_metadata_consistency("thing_classes", [])
    with pytest.raises(ValueError, match=rf"{a}.*{b}.*thing_classes"):
        utils.check_metadata_consistency("thing_classes", [a, b])
    with pytest.raises(AttributeError):
        utils.check_metadata_consistency("keypoint_names", [a])


def test_get_fed_loss_cls_weights():
    counts = [{"id": 2, "image_count": 9}, {"id": 0, "image_count": 4}, {"id": 1, "image_count": 1}]
    name = new_dataset_name(class_image_count=counts)
    torch.testing.assert_close(utils.get_fed_loss_cls_weights(name, 0.5), torch.tensor([2.0, 1.0, 3.0]))
    torch.testing.assert_close(utils.get_fed_loss_cls_weights([name], 1.0), torch.tensor([4.0, 1.0, 9.0]))


def test_gen_crop_transform_with_instance():
    instance = {"bbox": [30, 10, 10, 10], "bbox_mode": BoxMode.XYWH_ABS}  # centre (35, 15)
    for _ in range(30):
        crop = utils.gen_crop_transform_with_instance((8, 12), (40, 50), instance)
        assert (crop.h, crop.w) == (8, 12)
        assert crop.x0 <= 35 <= crop.x0 + crop.w and crop.y0 <= 15 <= crop.y0 + crop.h
        assert 0 <= crop.x0 <= 38 and 0 <= crop.y0 <= 32
    with pytest.raises(ValueError, match="larger than the image"):
        utils.gen_crop_transform_with_instance((50, 12), (40, 50), instance)
    with pytest.raises(ValueError, match="outside"):
        utils.gen_crop_transform_with_instance((8, 12), (10, 10), instance)


def test_build_augmentation():
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (640, 800)
    train = utils.build_augmentation(cfg, True)
    assert isinstance(train[0], T.ResizeShortestEdge) and isinstance(train[1], T.RandomFlip)
    assert train[0].short_edge_length == (640, 800) and not train[0].is_range and train[1].horizontal
    test = utils.build_augmentation(cfg, False)
    assert len(test) == 1 and test[0].short_edge_length == (800, 800) and test[0].max_size == 1333
    cfg.INPUT.RANDOM_FLIP = "vertical"
    assert utils.build_augmentation(cfg, True)[1].vertical
    cfg.INPUT.RANDOM_FLIP = "none"
    assert len(utils.build_augmentation(cfg, True)) == 1
    cfg.INPUT.RANDOM_FLIP = "diagonal"
    with pytest.raises(ValueError, match="RANDOM_FLIP"):
        utils.build_augmentation(cfg, True)
    assert utils.build_transform_gen is utils.build_augmentation
